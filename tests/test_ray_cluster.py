"""`serve --ray`: the cluster tests (tests/cluster, on a real three-node Ray cluster) run in a
network namespace with loopback alone; here, what needs no cluster: without --ray no Ray is
imported, and an address nobody answers at is an error at start, not a hang."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import chat, echo_server

from llama_api.testing.requirements import missing, require_installed
from llama_api.testing.server import free_port

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_TESTS_TIMEOUT = 600  # seconds; they take about a minute


def require_network_namespaces() -> None:
    """`unshare -n` needs root (or user namespaces) and util-linux; `ip` brings loopback up."""
    absent = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    if absent:
        reason = f"{' and '.join(absent)} not found"
    elif subprocess.run(["unshare", "-n", "true"], check=False, capture_output=True).returncode:
        reason = "unshare -n is not permitted here (it needs root)"
    else:
        return
    missing(f"the Ray cluster tests need a network namespace: {reason}",
            "`make test` runs as root in CI, where `unshare -n` works")


def test_the_cluster_tests_pass_on_a_real_ray_cluster_in_a_network_namespace():
    require_installed("ray")
    require_network_namespaces()
    command = ("ip link set lo up && exec " + sys.executable +
               " -m pytest tests/cluster -q -p no:cacheprovider -p no:randomly -rA")
    process = subprocess.Popen(["unshare", "-n", "sh", "-c", command], cwd=ROOT,
                               env={**os.environ, "LLAMA_API_TEST_NETNS": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=CLUSTER_TESTS_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the cluster tests took over {CLUSTER_TESTS_TIMEOUT} s:\n{output[-6000:]}")
    lines = [line for line in output.splitlines() if "network_util.cc" not in line]
    print("\n".join(lines[-40:]))
    assert process.returncode == 0, "\n".join(lines[-150:])
    assert " passed" in lines[-1] and "skipped" not in lines[-1], lines[-1]


def test_without_ray_the_server_never_imports_it(tmp_path):
    with echo_server(tmp_path / "models", models={"fast": {}}) as server:
        assert chat(server, "fast", max_tokens=2).status_code == 200
        # Ray's core is a shared library: mapped into the process once imported.
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        assert "_raylet" not in maps and "/ray/" not in maps
    script = ("import sys; from llama_api.cli import main; "
              "from llama_api.api.app import create_app; create_app(); "
              "print(sorted(m for m in sys.modules if m == 'ray' "
              "or m.startswith(('ray.', 'llama_api.cluster'))))")
    imported = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True,
                              text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "[]"


def test_a_ray_address_nobody_answers_at_is_an_error_at_start():
    require_installed("ray")
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    finished = subprocess.run(
        [sys.executable, "-m", "llama_api", "serve", "--port", str(free_port()), "--ray", address],
        check=False, capture_output=True, text=True, timeout=60,
        env={**os.environ, "LLAMA_API_PLUGINS": "echo"})
    assert finished.returncode == 2, finished.stderr
    assert f"no Ray cluster answers at {address}" in finished.stderr
    assert "ray start --head" in finished.stderr
    assert time.monotonic() - started < 30  # Ray alone retries for minutes


def test_a_ray_address_that_is_no_address_is_an_error_at_start():
    require_installed("ray")
    finished = subprocess.run(
        [sys.executable, "-m", "llama_api", "serve", "--ray", "head-node"],
        check=False, capture_output=True, text=True, timeout=60,
        env={**os.environ, "LLAMA_API_PLUGINS": "echo"})
    assert finished.returncode == 2
    assert "expected HOST:PORT" in finished.stderr
