"""The set-up: torch and TensorFlow pins read from one data file by the Makefile and
`llama-api install`, on every supported Python; `make test`'s rule that a test skipped for a
failed import is a failure."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from llama_api.cli import install

ROOT = Path(__file__).resolve().parents[1]
PINS_FILE = ROOT / "core" / "llama_api" / "cli" / "pins.toml"


def make(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **(env or {})})


def show(*names: str, **variables: str) -> subprocess.CompletedProcess:
    """`make` printing the value of each variable in names, one a line."""
    return make("-s", *(f"{k}={v}" for k, v in variables.items()),
                "--eval=show-%: ; @echo '$($*)'", *(f"show-{name}" for name in names))


def python(version: str) -> str | None:
    """An interpreter of that version on this machine: pyenv's, else one on PATH."""
    if sys.version_info[:2] == tuple(map(int, version.split("."))):
        return sys.executable
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [*glob.glob(f"{pyenv}/versions/{version}.*/bin/python{version}"),
                  shutil.which(f"python{version}")]
    for candidate in filter(None, candidates):
        works = subprocess.run([candidate, "-c", ""], capture_output=True, check=False)
        if works.returncode == 0:  # a pyenv shim of a version not selected fails
            return candidate
    return None


def test_the_pins_live_in_one_data_file_that_ships_with_the_package():
    with PINS_FILE.open("rb") as file:
        pins = tomllib.load(file)
    assert install.PINS == pins
    assert set(pins) == {"torch", "tensorflow"}
    for source in ("Makefile", "core/llama_api/cli/install.py"):
        text = (ROOT / source).read_text()
        assert not any(pin in text for pin in pins.values()), source
    with (ROOT / "core" / "pyproject.toml").open("rb") as file:
        package_data = tomllib.load(file)["tool"]["setuptools"]["package-data"]
    assert "pins.toml" in package_data["llama_api.cli"]


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_the_makefile_reads_the_pins_on_every_supported_python(version):
    interpreter = python(version)
    if interpreter is None:
        pytest.skip(f"no Python {version} on this machine")
    result = show("TORCH", "TENSORFLOW", PYTHON=interpreter)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [install.PINS["torch"], install.PINS["tensorflow"]]


def test_the_set_up_installs_the_pins(tmp_path):
    venv = tmp_path / "venv"
    printed = make("-n", f"VENV={venv}", f"{venv}/.test")
    assert printed.returncode == 0, printed.stderr
    assert f'"{install.PINS["torch"]}"' in printed.stdout
    assert f'"{install.PINS["tensorflow"]}"' in printed.stdout
    assert "--extra-index-url" not in printed.stdout
    cpu = "https://download.pytorch.org/whl/cpu"
    printed = make("-n", f"VENV={venv}", f"TORCH_INDEX_URL={cpu}", f"{venv}/.serve")
    torch_line = next(line for line in printed.stdout.splitlines() if "torch==" in line)
    assert f"--extra-index-url {cpu}" in torch_line


def test_a_pin_that_cannot_be_read_stops_make(tmp_path):
    result = show("TORCH", PINS_FILE=tmp_path / "missing.toml")
    assert result.returncode != 0
    assert "could not read the torch pin" in result.stderr
    assert "No such file" in result.stderr  # Python's own message is shown too

    only_torch = tmp_path / "pins.toml"
    only_torch.write_text('torch = "torch==2.13.0"\n')
    result = show("TORCH", "TENSORFLOW", PINS_FILE=only_torch)
    assert result.returncode != 0
    assert "could not read the tensorflow pin" in result.stderr

    result = make("-n", f"VENV={tmp_path / 'venv'}", "TORCH=", f"{tmp_path / 'venv'}/.serve")
    assert result.returncode != 0
    assert "TORCH is empty" in result.stderr


def test_make_test_makes_skips_for_failed_imports_strict():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: export LLAMA_API_STRICT_SKIPS := 1$", makefile, re.MULTILINE)


# A test run in a folder of its own, with this repository's conftest.py.
TESTS = {
    "test_runtime.py": """
        import pytest

        @pytest.fixture
        def tensorflow():
            return pytest.importorskip("no_such_module_a", reason="TensorFlow is not installed")

        def test_in_a_fixture(tensorflow):
            pass

        def test_in_the_test():
            pytest.importorskip("no_such_module_b")

        def test_one_core():
            pytest.skip("one core: nothing to share")

        @pytest.mark.skipif(True, reason="needs an NVIDIA GPU with CUDA")
        def test_gpu():
            pass

        def test_found():
            assert pytest.importorskip("json")
        """,
    "test_module.py": """
        import pytest

        pytest.importorskip("no_such_module_c")

        def test_never_runs():
            pass
        """,
}


def run_pytest(folder: Path, *args: str, strict: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LLAMA_API_"))}
    env.update(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", COLUMNS="200")  # whole summary lines
    if strict:
        env["LLAMA_API_STRICT_SKIPS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
                           *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture
def folder(tmp_path):
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    for name, text in TESTS.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def test_without_the_rule_every_skip_is_a_skip(folder):
    result = run_pytest(folder, strict=False)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 5 skipped" in result.stdout


@pytest.mark.parametrize("workers", [[], ["-p", "xdist.plugin", "-n", "2"]],
                         ids=["serial", "xdist"])
def test_strict_skips_fail_a_failed_import_and_keep_the_other_skips(folder, workers):
    result = run_pytest(folder, "test_runtime.py", *workers, strict=True)
    assert result.returncode == 1
    summary = result.stdout.splitlines()[-1]
    assert "1 failed" in summary and "1 passed" in summary and "2 skipped" in summary
    assert "1 error" in summary, summary  # the fixture's import: an error at set-up
    assert "FAILED test_runtime.py::test_in_the_test - could not import 'no_such_module_b'" \
        in result.stdout
    assert "ERROR test_runtime.py::test_in_a_fixture - TensorFlow is not installed" \
        in result.stdout
    assert "LLAMA_API_STRICT_SKIPS is set" in result.stdout


def test_strict_skips_make_a_module_that_skips_itself_a_collection_error(folder):
    result = run_pytest(folder, "test_module.py", strict=True)
    assert result.returncode != 0
    assert "ERROR test_module.py - could not import 'no_such_module_c'" in result.stdout
    assert "1 error" in result.stdout.splitlines()[-1]


def test_a_package_the_set_up_installs_fails_a_test_under_make_test(monkeypatch):
    from llama_api.testing import require_installed

    require_installed("msgspec")  # installed: nothing happens
    monkeypatch.delenv("LLAMA_API_STRICT_SKIPS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-dist is not installed"):
        require_installed("no-such-dist")
    monkeypatch.setenv("LLAMA_API_STRICT_SKIPS", "1")
    with pytest.raises(pytest.fail.Exception, match="the set-up installs it"):
        require_installed("no-such-dist")
