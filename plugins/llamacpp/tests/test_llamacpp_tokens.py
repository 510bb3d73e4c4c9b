"""Tokenize, detokenize and rerank on generated GGUFs: the tiny chat llama, and a tiny BERT
with a rank head (pooling type rank), checked against the head computed by hand."""

from __future__ import annotations

import anyio
import numpy as np
import pytest

import llama_api_llamacpp as plugin
from llama_api import errors
from llama_api.contract.records import (
    EmbedRequest,
    LoadContext,
    ModelSpec,
    RerankRequest,
    TokenizeRequest,
)
from llama_api.testing.conformance import running_worker
from llama_api_llamacpp.tiny import write_tiny_bert_gguf

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

TEXT = "hello world, the cat is a dog"
N_EMBD = 32  # write_tiny_bert_gguf's default width


def tokenize(model, **fields):
    return plugin.tokenize(model=model, request=TokenizeRequest(**fields))


def test_text_round_trips_and_special_tokens_come_as_a_prompt_has_them(tiny_plain):
    plain = tokenize(tiny_plain, text=TEXT, add_special_tokens=False, with_pieces=True)
    assert plugin.detokenize(model=tiny_plain, tokens=plain.tokens) == TEXT
    assert "".join(plain.pieces).lstrip() == TEXT
    special = tokenize(tiny_plain, text=TEXT)
    assert special.tokens == tiny_plain.prompt_tokens(TEXT)
    assert special.tokens[1:] == plain.tokens and special.max_model_len == tiny_plain.n_ctx
    # Special tokens are spelled out; a lone byte of a multi-byte character is bytes.
    assert plugin.detokenize(model=tiny_plain, tokens=special.tokens[:1]) == "<s>"
    euro = tokenize(tiny_plain, text="日本€", add_special_tokens=False, with_pieces=True)
    assert plugin.detokenize(model=tiny_plain, tokens=euro.tokens) == "日本€"
    assert any(isinstance(piece, list) for piece in euro.pieces) or "€" in euro.pieces


def test_messages_count_what_a_chat_request_reads(tiny_plain, collect):
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello world"}]
    counted = tokenize(tiny_plain, messages=messages)
    _, deltas = collect(tiny_plain, messages=messages, max_tokens=1, temperature=0.0)
    assert len(counted.tokens) == deltas[-1].usage.prompt_tokens
    text = plugin.detokenize(model=tiny_plain, tokens=counted.tokens)
    assert text.endswith("<|assistant|>")  # the generation prompt is part of it
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    assert len(tokenize(tiny_plain, messages=messages, tools=tools).tokens) > len(counted.tokens)


def test_messages_without_a_chat_template_and_ids_out_of_range_are_400s(tiny_dir):
    model = plugin.load_model(spec=ModelSpec(id="tiny-base", backend="llamacpp",
                                             path=str(tiny_dir / "plain" / "tiny-base.gguf"),
                                             options={"n_parallel": 1}),
                              context=LoadContext(n_threads=1)).model
    try:
        with pytest.raises(errors.BadRequest, match="tiny-base"):
            tokenize(model, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(errors.BadRequest, match="out of range") as info:
            plugin.detokenize(model=model, tokens=[model.n_vocab])
        assert info.value.param == "tokens"
        with pytest.raises(errors.NotSupported, match="tiny-base"):
            plugin.rerank(model=model, request=RerankRequest(query="q", documents=["d"]))
    finally:
        plugin.unload_model(model=model)


def test_a_piece_longer_than_256_bytes_is_spelled_whole(tmp_path):
    from llama_api_llamacpp.tiny import write_tiny_gguf

    long_token = "<|" + "long" * 80 + "|>"  # 324 bytes
    model = load(write_tiny_gguf(tmp_path / "long.gguf", special_tokens=[long_token]),
                 "tiny-long", n_parallel=1)
    try:
        got = tokenize(model, text=f"hello{long_token}", add_special_tokens=False,
                       with_pieces=True)
        assert got.pieces[-1] == long_token
        assert model.piece(got.tokens[-1], special=True) == long_token.encode()
        assert model.piece(got.tokens[-1]) == b""  # generated text leaves control tokens out
        assert plugin.detokenize(model=model, tokens=got.tokens).endswith(long_token)
    finally:
        plugin.unload_model(model=model)


# -- a GGUF reranker -------------------------------------------------------------------

def rank_head(seed: int = 7) -> dict[str, np.ndarray]:
    """The classification head llama.cpp runs for pooling type rank:
    score = out · tanh(W · h_cls + b) + out_b."""
    rng = np.random.default_rng(seed)
    return {"cls.weight": (rng.standard_normal((N_EMBD, N_EMBD)) * 0.5).astype(np.float32),
            "cls.bias": (rng.standard_normal(N_EMBD) * 0.1).astype(np.float32),
            "cls.output.weight": rng.standard_normal((1, N_EMBD)).astype(np.float32),
            "cls.output.bias": np.array([0.1], dtype=np.float32)}


@pytest.fixture(scope="module")
def reranker_path(tmp_path_factory, monkeypatch_module):
    """write_tiny_bert_gguf's BERT, with pooling type rank and a rank head."""
    import gguf

    head = rank_head()

    class RankWriter(gguf.GGUFWriter):
        def add_pooling_type(self, value):
            super().add_pooling_type(gguf.PoolingType.RANK)

        def write_header_to_file(self, *args, **kwargs):
            for name, tensor in head.items():
                self.add_tensor(name, tensor)
            super().write_header_to_file(*args, **kwargs)

    monkeypatch_module.setattr(gguf, "GGUFWriter", RankWriter)
    path = write_tiny_bert_gguf(tmp_path_factory.mktemp("rank") / "tiny-reranker.gguf")
    monkeypatch_module.undo()
    return path


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def load(path, model_id, **options):
    return plugin.load_model(spec=ModelSpec(id=model_id, backend="llamacpp", path=str(path),
                                            options=options),
                             context=LoadContext(n_threads=1)).model


QUERY = "the cat"
DOCUMENTS = ["hello world", "the cat is a dog", "no", "a cat and a dog and a cat"]


def test_scores_are_the_rank_head_on_each_pair(reranker_path):
    """The same GGUF with CLS pooling gives h_cls of each pair, laid out as llama.cpp's
    server lays pairs out; the head by hand must give the reranker's scores."""
    reranker = load(reranker_path, "tiny-reranker")
    encoder = load(reranker_path, "tiny-cls", pooling="cls", normalize=False)
    try:
        result = plugin.rerank(model=reranker, request=RerankRequest(query=QUERY,
                                                                     documents=DOCUMENTS))
        query = reranker.tokenize(QUERY, add_bos=False, special=False)
        pairs = []
        for doc in DOCUMENTS:
            pairs.append([2, *query, 3, *reranker.tokenize(doc, add_bos=False, special=False),
                          3])  # [CLS] query [SEP] document [SEP]
        hidden = np.asarray(plugin.embed(model=encoder, request=EmbedRequest(input=pairs))
                            .embeddings, dtype=np.float64)
        head = {name: value.astype(np.float64) for name, value in rank_head().items()}
        logits = (np.tanh(hidden @ head["cls.weight"].T + head["cls.bias"])
                  @ head["cls.output.weight"].T)[:, 0] + head["cls.output.bias"][0]
        assert np.allclose(result.scores, 1 / (1 + np.exp(-logits)), atol=1e-5)
        assert result.prompt_tokens == sum(map(len, pairs))
        alone = [plugin.rerank(model=reranker, request=RerankRequest(
            query=QUERY, documents=[doc])).scores[0] for doc in DOCUMENTS]
        assert np.allclose(alone, result.scores, atol=1e-6)
        assert len(set(np.round(result.scores, 6))) == len(DOCUMENTS)
    finally:
        plugin.unload_model(model=reranker)
        plugin.unload_model(model=encoder)


def test_discovery_and_a_worker_serve_the_reranker(reranker_path):
    [spec] = [s for s in plugin.discover_models(models_dir=reranker_path.parent)
              if s.id == "tiny-reranker"]
    assert spec.meta["pooling"] == "rank" and spec.options == {"embedding": True}
    spec.plugin = "llamacpp"

    async def main():
        async with running_worker(spec) as worker:
            scored = await worker.rerank(RerankRequest(query=QUERY, documents=DOCUMENTS))
            tokens = await worker.tokenize(TokenizeRequest(text=QUERY, add_special_tokens=False))
            return scored, await worker.detokenize(tokens.tokens)

    scored, text = anyio.run(main)
    assert len(scored.scores) == len(DOCUMENTS) and all(0 < s < 1 for s in scored.scores)
    assert text == QUERY


def test_discovery_calls_a_rank_gguf_a_reranker(reranker_path):
    from llama_api_llamacpp.gguf_meta import read_meta

    meta = read_meta(reranker_path)
    assert (meta["kind"], meta["pooling"], meta["embedding"]) == ("rerank", "rank", True)
