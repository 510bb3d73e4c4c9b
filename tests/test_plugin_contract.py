"""Plugins and their contract (llama_api.contract): how they are found (a worker imports its
plugin from the entry point the server hands it, without a scan), refused and called.

Plugins made here are real distributions: a module and a `.dist-info` folder with an entry
point, on a temporary `sys.path` entry (and PYTHONPATH, for the worker processes).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pluggy
import pytest

from llama_api import errors
from llama_api.contract import CONTRACT_VERSION, ModelSpec
from llama_api.testing.conformance import running_worker
from llama_api.workers import plugins as plugin_loading
from llama_api.workers import protocol
from llama_api.workers.plugins import Plugins, entry_point_value

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin-minimal"

REGISTER = '''
from llama_api.contract import BackendInfo, hookimpl

CALLED = []


@hookimpl
def register_backends():
    CALLED.append("register_backends")
    return [BackendInfo(name="{name}")]
'''


# -- finding plugins ------------------------------------------------------------------------

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


# -- the contract ---------------------------------------------------------------------------

@pytest.fixture
def install(tmp_path, monkeypatch):
    """install(name, source): a plugin distribution `name` whose entry module holds
    `source`, importable here and by the workers this test starts."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    plugin_loading._entry_point_values.cache_clear()  # the workers look the new ones up

    def install(name: str, source: str) -> str:
        module = f"contract_plugin_{name}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        dist = tmp_path / f"{module}-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(f"[llama_api]\n{name} = {module}\n")
        return module

    yield install
    plugin_loading._entry_point_values.cache_clear()
    for name in [name for name in sys.modules if name.startswith("contract_plugin_")]:
        del sys.modules[name]  # the next test writes its own under the same name


@pytest.mark.parametrize("declared", ['"2.0"', '"0.9"', "1", None],
                         ids=["next-major", "older-major", "not-a-string", "none"])
def test_a_plugin_for_another_contract_is_listed_broken_and_never_called(install, declared):
    line = f"LLAMA_API_CONTRACT = {declared}\n" if declared else ""
    module = install("other", line + REGISTER.format(name="other"))
    plugins = Plugins(only="other")
    reason = plugins.broken["other"]
    assert "contract" in reason.lower() and CONTRACT_VERSION in reason
    if declared == '"2.0"':
        assert "written for contract 2.0" in reason
    assert plugins.names() == [] and plugins.backends() == {}
    assert sys.modules[module].CALLED == []
    # the full scan, as the server runs it: the others load, this one is reported
    everything = Plugins()
    assert "other" in everything.broken and "echo" in everything.names()


def test_a_newer_minor_version_of_the_same_major_is_accepted(install):
    major = CONTRACT_VERSION.split(".")[0]
    install("newer", f'LLAMA_API_CONTRACT = "{major}.99"\n' + REGISTER.format(name="newer"))
    plugins = Plugins(only="newer")
    assert plugins.broken == {} and plugins.backends() == {"newer": "newer"}


def test_a_hook_parameter_with_a_default_is_refused_naming_the_plugin_and_the_hook(install):
    # pluggy before 1.7 never passes an argument whose parameter has a default: `gpu`
    # would always be False there, whatever the server knows
    install("defaulted", 'LLAMA_API_CONTRACT = "1.0"\n' + REGISTER.format(name="defaulted") + '''

@hookimpl
def estimate_memory(spec, gpu=False):
    return (1, 2 if gpu else 0)
''')
    plugins = Plugins(only="defaulted")
    reason = plugins.broken["defaulted"]
    assert "estimate_memory" in reason and "'gpu'" in reason and "default" in reason
    assert plugins.pm.get_plugin("defaulted") is None  # none of its hooks is called
    assert plugins.estimate_memory(ModelSpec(id="m", backend="defaulted"), True) is None


def test_estimate_memory_reaches_the_serving_plugin_alone_with_the_gpu_answer(install):
    for name, host in (("first", 1), ("second", 100)):
        install(name, 'LLAMA_API_CONTRACT = "1.0"\n' + REGISTER.format(name=name) + f'''

@hookimpl
def estimate_memory(spec, gpu):
    return ({host}, 7 if gpu else 0)
''')
    plugins = Plugins()
    assert plugins.estimate_memory(ModelSpec(id="m", backend="second"), True) == (100, 7)
    assert plugins.estimate_memory(ModelSpec(id="m", backend="first"), False) == (1, 0)
    assert plugins.estimate_memory(ModelSpec(id="m", backend="nobody"), True) is None


def test_load_model_must_return_a_loaded_model(install):
    install("bare", 'LLAMA_API_CONTRACT = "1.0"\n' + REGISTER.format(name="bare") + '''

@hookimpl
def load_model(spec, context):
    return object()  # contract 0 returned the backend's object itself
''')
    spec = ModelSpec(id="bare-model", backend="bare", plugin="bare")

    async def main():
        async with running_worker(spec):
            pass

    with pytest.raises(errors.ModelLoadError) as info:
        anyio.run(main)
    assert "plugin bare" in info.value.message and "LoadedModel" in info.value.message


def test_a_worker_refuses_what_the_plugin_has_no_hook_for_naming_the_model(install):
    install("partial", 'LLAMA_API_CONTRACT = "1.0"\n' + REGISTER.format(name="partial") + '''
from llama_api.contract import EmbedResult, LoadedModel


@hookimpl
def load_model(spec, context):
    return LoadedModel(model={"id": spec.id}, slots=2, info={"kind": "partial"})


@hookimpl
def embed(model, request):
    return EmbedResult(embeddings=[[1.0, 0.0]] * len(request.input), prompt_tokens=1)
''')
    spec = ModelSpec(id="half-a-model", backend="partial", plugin="partial")

    async def main():
        from llama_api.contract import EmbedRequest, TokenizeRequest

        async with running_worker(spec) as worker:
            assert worker.slots == 2 and worker.info["kind"] == "partial"
            embedded = await worker.embed(EmbedRequest(input=["a", "b"]))
            refusals = []
            for call in (lambda: worker.tokenize(TokenizeRequest(text="a")),
                         lambda: worker.detokenize([1])):
                try:
                    await call()
                except errors.NotSupported as exc:
                    refusals.append(exc.message)
            return embedded, refusals

    embedded, refusals = anyio.run(main)
    assert (embedded.count, embedded.dims) == (2, 2)
    assert len(refusals) == 2 and all("half-a-model" in message for message in refusals)


def test_the_readme_shows_the_example_plugin_that_runs():
    """The README's plugin example is the package `make test` installs and runs the
    conformance kit on, character for character."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:python|toml)\n(.*?)```", readme, flags=re.DOTALL)
    source = (EXAMPLE / "llama_api_minimal" / "__init__.py").read_text()
    assert source in blocks, "README's plugin code differs from examples/plugin-minimal"
    entry_point = (EXAMPLE / "pyproject.toml").read_text().split("[project.entry-points")[1]
    assert any(entry_point.splitlines()[1] in block for block in blocks)
    assert "examples/plugin-minimal" in readme


def pluggy_lower_bound() -> str:
    text = (ROOT / "core" / "pyproject.toml").read_text()
    return re.search(r'"pluggy>=([0-9.]+)', text).group(1)


def test_pluggy_is_the_version_this_run_asked_for():
    """Under the oldest-pluggy run (the next test), that oldest version; otherwise one the
    core allows."""
    installed = tuple(int(part) for part in pluggy.__version__.split(".")[:2])
    oldest = tuple(int(part) for part in pluggy_lower_bound().split(".")[:2])
    if os.environ.get("LLAMA_API_EXPECT_PLUGGY"):
        assert installed == oldest
    else:
        assert installed >= oldest


def test_the_contract_holds_under_the_oldest_pluggy_the_core_allows():
    """This file, the echo backend's and the example plugin's conformance, again with the
    oldest pluggy `core/pyproject.toml` allows (the test set-up puts it in the venv's
    `oldest-pluggy` folder): hooks called through pluggy as the server calls them."""
    oldest = Path(sys.prefix) / "oldest-pluggy"
    if not (oldest / "pluggy").is_dir():
        message = f"no pluggy in {oldest} (make test installs pluggy=={pluggy_lower_bound()})"
        if os.environ.get("LLAMA_API_STRICT_SKIPS"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    env = {**os.environ, "LLAMA_API_EXPECT_PLUGGY": pluggy_lower_bound(),
           "PYTHONPATH": os.pathsep.join([str(oldest),
                                          *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-k", "not oldest_pluggy", str(Path(__file__)),
         str(ROOT / "tests" / "test_echo_conformance.py"), str(EXAMPLE / "tests")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1]
