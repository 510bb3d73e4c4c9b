"""The conformance kit on this plugin: one import, two fixtures, the capabilities it has."""

import pytest

from llama_api.contract import ModelSpec
from llama_api.testing import BackendConformance

TEXT = "once upon a time there was a cat and the cat sat on a mat and the mat was red " * 4


class TestWordChain(BackendConformance):
    generates = True
    embeds = True
    tokenizes = False  # no tokenize hook: the core refuses, naming the model
    reranks = False

    @pytest.fixture
    def model_spec(self, tmp_path):
        path = tmp_path / "tale.wordchain"
        path.write_text(TEXT)
        return ModelSpec(id="tale", backend="wordchain", path=str(path), plugin="minimal")

    @pytest.fixture
    def bad_model_spec(self, tmp_path):
        path = tmp_path / "empty.wordchain"
        path.write_text("")
        return ModelSpec(id="empty", backend="wordchain", path=str(path), plugin="minimal")
