"""The core's own backend conformance suite, run against the deterministic echo backend."""

from __future__ import annotations

import json

import pytest

from llama_api.contract.records import ModelSpec
from llama_api.testing import BackendConformance


class TestEchoBackend(BackendConformance):
    generates = True
    embeds = True
    tokenizes = True
    reranks = True
    prompt = "the quick brown fox jumps"
    long_max_tokens = 2000

    @pytest.fixture
    def model_spec(self, tmp_path):
        path = tmp_path / "tiny.echo"
        path.write_text(json.dumps({"delay": 0.001}))
        return ModelSpec(id="tiny", backend="echo", path=str(path), plugin="echo")

    @pytest.fixture
    def bad_model_spec(self, tmp_path):
        path = tmp_path / "corrupt.echo"
        path.write_text("{not json")
        return ModelSpec(id="corrupt", backend="echo", path=str(path), plugin="echo")
