"""Cross-encoder rerankers: a small random-weight BERT cross-encoder written by the test,
scored as sentence-transformers' CrossEncoder.predict scores it; in-process, through a real
worker, and through /v1/rerank on a real server."""

from __future__ import annotations

import anyio
import httpx
import numpy as np
import pytest

import llama_api_embeddings as plugin
from llama_api import errors
from llama_api.contract.records import EmbedRequest, ModelSpec, RerankRequest
from llama_api.testing import serve
from llama_api.testing.conformance import running_worker

QUERY = "how do cats sleep"
DOCUMENTS = [
    "Cats sleep for most of the day, often twelve hours or more.",
    "The stock market fell sharply on Tuesday.",
    "A kitten naps curled up in the sun.",
    "",
    "Dogs and cats can both be kept as pets, and many families keep one of each " * 4,
]


def write_cross_encoder(folder, tokenizer_folder, seed=0):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_folder))
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, num_labels=1)
    transformers.BertForSequenceClassification(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, minilm_path):
    models = tmp_path_factory.mktemp("rerank-models")
    write_cross_encoder(models / "tiny-reranker", minilm_path)
    return models


@pytest.fixture(scope="module")
def reranker_spec(models_dir):
    return ModelSpec(id="tiny-reranker", backend="transformers",
                     path=str(models_dir / "tiny-reranker"), plugin="embeddings")


@pytest.fixture(scope="module")
def expected(models_dir):
    """What sentence-transformers' CrossEncoder says of each (query, document) pair."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model = sentence_transformers.CrossEncoder(str(models_dir / "tiny-reranker"), device="cpu")
    return np.asarray(model.predict([(QUERY, doc) for doc in DOCUMENTS], batch_size=2),
                      dtype=np.float64)


def test_discovery_lists_the_cross_encoder_as_a_reranker(models_dir):
    found = {spec.id: spec for spec in plugin.discover_models(models_dir=models_dir)}
    assert found["tiny-reranker"].backend == "transformers"
    assert found["tiny-reranker"].meta["task"] == "rerank"
    assert found["all-MiniLM-L6-v2"].meta["task"] == "embeddings"


def test_scores_equal_cross_encoder_predict(reranker_spec, expected, helpers):
    model = helpers.load(reranker_spec, n_threads=1)
    try:
        assert model.info["activation"] == "Sigmoid"
        result = plugin.rerank(model=model, request=RerankRequest(query=QUERY,
                                                                  documents=DOCUMENTS))
        assert np.allclose(result.scores, expected, atol=1e-5, rtol=0)
        # Every pair read in full except the long one, truncated at the model's 512.
        assert result.prompt_tokens > len(DOCUMENTS) * 5
        with pytest.raises(errors.NotSupported, match="tiny-reranker"):
            plugin.embed(model=model, request=EmbedRequest(input=["a"]))
    finally:
        plugin.unload_model(model=model)


def test_a_saved_identity_activation_gives_raw_logits(models_dir, minilm_path, tmp_path,
                                                      helpers):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    torch = pytest.importorskip("torch")
    model = sentence_transformers.CrossEncoder(str(models_dir / "tiny-reranker"), device="cpu",
                                               activation_fn=torch.nn.Identity())
    model.save(str(tmp_path / "raw"))
    logits = model.predict([(QUERY, doc) for doc in DOCUMENTS])
    spec = ModelSpec(id="raw", backend="transformers", path=str(tmp_path / "raw"),
                     plugin="embeddings")
    loaded = helpers.load(spec, n_threads=1)
    try:
        assert loaded.info["activation"] == "Identity"
        result = loaded.rerank(RerankRequest(query=QUERY, documents=DOCUMENTS))
        assert np.allclose(result.scores, logits, atol=1e-5, rtol=0)
    finally:
        plugin.unload_model(model=loaded)


def test_concurrent_requests_through_a_worker_share_batches(reranker_spec, expected):
    results = [None] * len(DOCUMENTS)

    async def main():
        async with running_worker(reranker_spec, n_threads=1) as worker:
            async def one(i):
                results[i] = await worker.rerank(RerankRequest(query=QUERY,
                                                               documents=[DOCUMENTS[i]]))

            async with anyio.create_task_group() as group:
                for i in range(len(DOCUMENTS)):
                    group.start_soon(one, i)

    anyio.run(main)
    scores = [result.scores[0] for result in results]
    assert np.allclose(scores, expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def server(models_dir):
    with serve("--models-dir", str(models_dir), "--threads", "1", "--max-workers", "2",
               env={"LLAMA_API_PLUGINS": "embeddings"}) as running:
        yield running


def test_rerank_route_sorts_by_cross_encoder_score(server, expected):
    answer = httpx.post(server.url + "/v1/rerank", timeout=120, json={
        "model": "tiny-reranker", "query": QUERY, "return_documents": True,
        "documents": [DOCUMENTS[0], *({"text": doc} for doc in DOCUMENTS[1:])]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    order = list(np.argsort(-expected, kind="stable"))
    assert [r["index"] for r in body["results"]] == order
    for item in body["results"]:
        assert item["relevance_score"] == pytest.approx(expected[item["index"]], abs=1e-5)
        assert item["document"] == {"text": DOCUMENTS[item["index"]]}
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    top = httpx.post(server.url + "/rerank", timeout=120, json={
        "model": "tiny-reranker", "query": QUERY, "documents": DOCUMENTS, "top_n": 2}).json()
    assert [r["index"] for r in top["results"]] == order[:2]


def test_an_encoder_cannot_rerank_and_a_reranker_cannot_embed(server):
    answer = httpx.post(server.url + "/v1/rerank", timeout=120, json={
        "model": "all-MiniLM-L6-v2", "query": "q", "documents": ["d"]})
    assert answer.status_code == 400
    assert "all-MiniLM-L6-v2" in answer.json()["error"]["message"]
    answer = httpx.post(server.v1 + "/embeddings", timeout=120,
                        json={"model": "tiny-reranker", "input": "hello"})
    assert answer.status_code == 400
    assert "tiny-reranker" in answer.json()["error"]["message"]


def test_tokenize_round_trips_with_the_models_tokenizer(server, minilm_path):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_path))
    text = "cats sleep, kittens nap"
    answer = httpx.post(server.url + "/tokenize", timeout=120, json={
        "model": "all-MiniLM-L6-v2", "prompt": text, "with_pieces": True}).json()
    ids = [token["id"] for token in answer["tokens"]]
    assert ids == tokenizer(text)["input_ids"]  # [CLS] ... [SEP]
    assert answer["tokens"][0]["piece"] == "[CLS]"
    assert answer["count"] == len(ids) and answer["max_model_len"] == 256
    plain = httpx.post(server.url + "/tokenize", timeout=120, json={
        "model": "tiny-reranker", "prompt": text, "add_special_tokens": False}).json()
    back = httpx.post(server.url + "/detokenize", timeout=120, json={
        "model": "tiny-reranker", "tokens": plain["tokens"]}).json()
    assert back == {"prompt": text}
    chat = httpx.post(server.url + "/tokenize", timeout=120, json={
        "model": "all-MiniLM-L6-v2", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400 and "chat template" in chat.json()["error"]["message"]
    too_big = httpx.post(server.url + "/detokenize", timeout=120, json={
        "model": "all-MiniLM-L6-v2", "tokens": [10**6]})
    assert too_big.status_code == 400 and too_big.json()["error"]["param"] == "tokens"


def test_an_xlm_roberta_reranker_without_a_tokenizer_limit_reads_within_its_positions(
        minilm_path, tmp_path, helpers, monkeypatch):
    """Review #8: its position ids start after the padding index, so it reads two tokens
    fewer than max_position_embeddings; a long pair used to index past them (a 503)."""
    import json

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_path))
    tokenizer.chat_template = "{% for m in messages %}{{ m.content }} {% endfor %}"
    torch.manual_seed(0)
    config = transformers.XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64, num_labels=1,
        max_position_embeddings=34, pad_token_id=1)
    folder = tmp_path / "xlmr-reranker"
    transformers.XLMRobertaForSequenceClassification(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    saved = json.loads((folder / "tokenizer_config.json").read_text())
    saved.pop("model_max_length", None)  # as some converted rerankers ship it
    (folder / "tokenizer_config.json").write_text(json.dumps(saved))

    model = helpers.load(ModelSpec(id="xlmr", backend="transformers", path=str(folder),
                                   plugin="embeddings"), n_threads=1)
    try:
        assert model.info["max_length"] == 32
        result = plugin.rerank(model=model, request=RerankRequest(
            query="cats " * 40, documents=["a kitten naps " * 40, "short"]))
        assert len(result.scores) == 2 and result.prompt_tokens <= 2 * 32

        # Review #13: the chat template was compiled at load, not per request.
        from llama_api.contract.records import TokenizeRequest
        from llama_api.text.chat_template import ChatTemplate

        def compile_again(*args, **kwargs):
            raise AssertionError("the chat template was compiled again")

        monkeypatch.setattr(ChatTemplate, "__init__", compile_again)

        for _ in range(2):
            tokens = plugin.tokenize(model=model, request=TokenizeRequest(
                messages=[{"role": "user", "content": "hello"}], add_special_tokens=False))
            assert tokens.tokens == tokenizer("hello ", add_special_tokens=False)["input_ids"]
    finally:
        plugin.unload_model(model=model)
