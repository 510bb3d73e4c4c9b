"""The set-up: torch and TensorFlow pins read from one data file by the Makefile and
`llama-api install`, on every supported Python."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from llama_api import install

ROOT = Path(__file__).resolve().parents[1]
PINS_FILE = ROOT / "core" / "llama_api" / "pins.toml"


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
    for source in ("Makefile", "core/llama_api/install.py"):
        text = (ROOT / source).read_text()
        assert not any(pin in text for pin in pins.values()), source
    with (ROOT / "core" / "pyproject.toml").open("rb") as file:
        package_data = tomllib.load(file)["tool"]["setuptools"]["package-data"]
    assert "pins.toml" in package_data["llama_api"]


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
