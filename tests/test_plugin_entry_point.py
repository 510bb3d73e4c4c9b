"""A worker loads its plugin from the entry point the server hands it, without a scan."""

import subprocess
import sys

from llama_api.workers import protocol
from llama_api.workers.plugins import Plugins, entry_point_value


def test_the_server_knows_each_plugins_entry_point():
    assert entry_point_value("echo") == "llama_api_echo"
    assert entry_point_value("no-plugin-by-this-name") is None


def test_a_plugin_loads_from_its_entry_point_alone():
    plugins = Plugins(only="echo", value="llama_api_echo")
    assert plugins.names() == ["echo"]
    assert plugins.backends() == {"echo": "echo"}
    assert plugins.broken == {}


def test_an_entry_point_that_fails_to_import_is_broken():
    plugins = Plugins(only="gone", value="llama_api_no_such_module:plugin")
    assert plugins.names() == []
    assert "No module named 'llama_api_no_such_module'" in plugins.broken["gone"]


def test_a_worker_given_a_broken_entry_point_answers_a_load_failure():
    done = subprocess.run(
        [sys.executable, "-m", "llama_api.workers.child", "gone", "llama_api_no_such_module"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=True)
    frames = list(protocol.FrameReader().feed(done.stdout))
    assert len(frames) == 1
    failed = protocol.from_worker_decoder.decode(frames[0])
    assert isinstance(failed, protocol.LoadFailed)
    assert failed.kind == "ModelLoadError"
    assert "llama_api_no_such_module" in failed.message
