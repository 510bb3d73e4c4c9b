"""The core's backend conformance suite, run through real worker subprocesses."""

from __future__ import annotations

import pytest

from llama_api.contract.records import ModelSpec
from llama_api.testing import BackendConformance

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")


@pytest.fixture
def corrupt_spec(tmp_path):
    path = tmp_path / "corrupt-weights.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 100)
    return ModelSpec(id="corrupt", backend="llamacpp", path=str(path), plugin="llamacpp")


class TestTinyGGUF(BackendConformance):
    generates = True
    embeds = False

    @pytest.fixture
    def model_spec(self, tiny_spec):
        return tiny_spec

    @pytest.fixture
    def bad_model_spec(self, corrupt_spec):
        return corrupt_spec


class TestTinyEmbeddingGGUF(BackendConformance):
    generates = True  # a llama with pooling still generates
    embeds = True

    @pytest.fixture
    def model_spec(self, tiny_dir):
        return ModelSpec(id="tiny-embed", backend="llamacpp",
                         path=str(tiny_dir / "tiny-embed.gguf"),
                         options={"embedding": True}, plugin="llamacpp")

    @pytest.fixture
    def bad_model_spec(self, corrupt_spec):
        return corrupt_spec


class TestSmolLM2(BackendConformance):
    generates = True
    embeds = False
    long_max_tokens = 2000

    @pytest.fixture
    def model_spec(self, smollm2_spec):
        return smollm2_spec

    @pytest.fixture
    def bad_model_spec(self, corrupt_spec):
        return corrupt_spec


class TestTinyBertGGUF(BackendConformance):
    generates = False
    embeds = True

    @pytest.fixture
    def model_spec(self, tiny_dir):
        return ModelSpec(id="tiny-bert", backend="llamacpp",
                         path=str(tiny_dir / "encoders" / "tiny-bert.gguf"),
                         options={"embedding": True}, plugin="llamacpp")

    @pytest.fixture
    def bad_model_spec(self, corrupt_spec):
        return corrupt_spec
