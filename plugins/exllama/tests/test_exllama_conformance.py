"""The conformance kit's server side on ExLlama folders, which needs no GPU; the whole kit
runs on a GPU in test_exllama_gpu.py."""

import pytest

from llama_api.contract import ModelSpec
from llama_api.testing import ServerSideConformance

FOLDERS = {  # backend -> the quantization its folders hold
    "exllamav2": {"quant_method": "gptq", "bits": 4},
    "exllamav3": {"quant_method": "exl3", "bits": 4},
}


@pytest.mark.parametrize("backend", sorted(FOLDERS))
class TestExllamaServerSide(ServerSideConformance):
    @pytest.fixture
    def model_spec(self, model_writer, backend):
        folder = model_writer(f"tiny-{backend}", quantization_config=FOLDERS[backend])
        return ModelSpec(id=folder.name, backend=backend, path=str(folder), plugin="exllama")
