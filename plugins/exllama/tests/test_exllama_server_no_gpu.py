"""End to end without a GPU: a real server lists ExLlama models and answers a request with 503."""

from __future__ import annotations

import pytest

from llama_api.testing import serve

httpx = pytest.importorskip("httpx")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


def test_no_gpu_path_server_lists_models_and_answers_503(model_writer):
    model_writer("gptq/Llama-2-7B-GPTQ", quantization_config={"quant_method": "gptq", "bits": 4})
    model_writer("tiny-llama")
    env = {"LLAMA_API_PLUGINS": "exllama"}
    with serve("--models-dir", str(model_writer.root), env=env) as server:
        models = {m["id"]: m for m in httpx.get(server.v1 + "/models").json()["data"]}
        assert {"Llama-2-7B-GPTQ", "tiny-llama"} <= set(models)

        for model, path, body in [
            ("Llama-2-7B-GPTQ", "/completions", {"prompt": "hello"}),
            ("tiny-llama", "/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ]:
            response = httpx.post(server.v1 + path, json={"model": model, **body}, timeout=120)
            assert response.status_code == 503, response.text
            message = response.json()["error"]["message"]
            assert "no CUDA device: exllama needs an NVIDIA GPU" in message

        # Content parts are the core's: an image part is refused before the model is needed.
        image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
        response = httpx.post(
            server.v1 + "/chat/completions",
            json={"model": "tiny-llama", "messages": [{"role": "user", "content": image}]},
            timeout=120,
        )
        assert response.status_code == 400, response.text

        assert httpx.get(server.url + "/health").status_code == 200  # the server stays up
