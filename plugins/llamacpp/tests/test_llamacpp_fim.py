"""Fill in the middle (`suffix` in /v1/completions) on GGUFs that have FIM tokens."""

from __future__ import annotations

import anyio
import pytest

from llama_api import errors
from llama_api.contract.records import GenerateRequest, LoadContext, ModelSpec
from llama_api.testing.conformance import generate_all, running_worker

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

import llama_api_llamacpp as plugin
from llama_api_llamacpp.tiny import FIM_TOKENS, write_tiny_gguf

PREFIX, SUFFIX = "hello world", "the cat is"


@pytest.fixture(scope="module")
def fim_spec(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("fim") / "tiny-fim.gguf", fim=True, seed=6)
    return ModelSpec(id="tiny-fim", backend="llamacpp", path=str(path), plugin="llamacpp")


@pytest.fixture(scope="module", params=[{}, {"n_parallel": 1}], ids=["default", "plain"])
def fim_model(fim_spec, request):
    spec = ModelSpec(id=fim_spec.id, backend="llamacpp", path=fim_spec.path, plugin="llamacpp",
                     options=request.param)
    model = plugin.load_model(spec=spec, context=LoadContext(n_threads=1)).model
    yield model
    plugin.unload_model(model=model)


def fim_layout(model, prefix: str, suffix: str) -> list[int]:
    """llama.cpp's /infill layout: BOS, FIM prefix token, prefix, suffix token, suffix,
    middle token."""
    pre, suf, mid = (model.tokenize(FIM_TOKENS[k], add_bos=False, special=True)[0]
                     for k in ("fim_pre", "fim_suf", "fim_mid"))
    text = model.tokenize
    return ([model.lib.llama_vocab_bos(model.vocab), pre]
            + text(prefix, add_bos=False, special=False) + [suf]
            + text(suffix, add_bos=False, special=False) + [mid])


def test_the_infill_prompt_is_prefix_suffix_middle(fim_model, collect):
    assert fim_model.info["fill_in_middle"] is True
    expected = fim_layout(fim_model, PREFIX, SUFFIX)
    fields = {"max_tokens": 12, "temperature": 0.0}
    text, deltas = collect(fim_model, prompt=PREFIX, suffix=SUFFIX, **fields)
    assert deltas[-1].usage.prompt_tokens == len(expected)
    assert deltas[-1].usage.completion_tokens >= 1
    # the same tokens sent as a token-id prompt give the same middle
    assert text == collect(fim_model, prompt=expected, **fields)[0]
    # and it is not what the plain prompt gives
    assert text != collect(fim_model, prompt=PREFIX, **fields)[0]


def test_fim_tokens_spelled_in_the_code_stay_text(fim_model, collect):
    prefix = "a " + FIM_TOKENS["fim_mid"]
    _, deltas = collect(fim_model, prompt=prefix, suffix=SUFFIX, max_tokens=1)
    assert deltas[-1].usage.prompt_tokens == len(fim_layout(fim_model, prefix, SUFFIX))
    assert deltas[-1].usage.prompt_tokens > len(fim_layout(fim_model, "a ", SUFFIX)) + 1


def test_token_id_prefix_and_echo(fim_model, collect):
    ids = fim_model.tokenize(PREFIX, add_bos=False, special=False)
    fields = {"max_tokens": 6, "temperature": 0.0, "suffix": SUFFIX}
    text = collect(fim_model, prompt=PREFIX, **fields)[0]
    assert collect(fim_model, prompt=ids, **fields)[0] == text
    assert collect(fim_model, prompt=PREFIX, echo=True, **fields)[0] == PREFIX + text


def test_a_model_without_fim_tokens_refuses_the_suffix(tiny, collect):
    assert tiny.info["fill_in_middle"] is False
    with pytest.raises(errors.NotSupported) as info:
        collect(tiny, prompt=PREFIX, suffix=SUFFIX)
    assert info.value.param == "suffix"
    assert tiny.spec.id in info.value.message and "FIM" in info.value.message


def test_fim_and_its_refusal_through_real_workers(fim_spec, tiny_spec):
    request = GenerateRequest(prompt=PREFIX, suffix=SUFFIX, max_tokens=4, temperature=0.0)

    async def infill(spec):
        async with running_worker(spec) as worker:
            return await generate_all(worker, request)

    _, deltas = anyio.run(infill, fim_spec)
    assert deltas[-1].finish_reason in ("stop", "length")
    assert deltas[-1].usage.prompt_tokens > len(PREFIX.split()) + len(SUFFIX.split()) + 3
    with pytest.raises(errors.NotSupported) as info:
        anyio.run(infill, tiny_spec)
    assert info.value.param == "suffix" and "tiny" in info.value.message
    assert info.value.status == 400
