"""The distribution: entry point, light dependencies, GPU libraries as extras."""

from __future__ import annotations

import tomllib
from importlib.metadata import distribution
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_declares_entry_point_and_extras():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert project["name"] == "llama-api-exllama"
    assert project["entry-points"]["llama_api"] == {"exllama": "llama_api_exllama"}
    # Bounded below the next minor: the adapters use each library's own API of that line.
    assert project["optional-dependencies"]["v2"] == ["exllamav2>=0.3.2,<0.4"]
    assert project["optional-dependencies"]["v3"] == ["exllamav3>=1.6.5,<1.7"]
    heavy = ("torch", "exllamav2", "exllamav3", "flash-attn", "flash_attn")
    assert not [
        d for d in project["dependencies"] if d.split(">")[0].split("=")[0].strip() in heavy
    ]


def test_installed_distribution_exposes_the_entry_point():
    dist = distribution("llama-api-exllama")
    eps = [ep for ep in dist.entry_points if ep.group == "llama_api"]
    assert [(ep.name, ep.value) for ep in eps] == [("exllama", "llama_api_exllama")]
