"""POST /v1/rerank over real echo workers (the app in-process): the echo backend scores a
document by the share of the query's words it holds."""

from __future__ import annotations

import json

import pytest

QUERY = "red apple pie"
DOCUMENTS = ["a blue car", "red apple pie", "an apple", {"text": "red apple"}]


@pytest.fixture
def models_dir(models_dir):
    """The shared echo models, and one that can't rerank."""
    (models_dir / "unranked.echo").write_text(json.dumps({"rerank": False}))
    return models_dir


def rerank(client, path="/v1/rerank", **fields):
    return client.post(path, json={"model": "fast", "query": QUERY, "documents": DOCUMENTS,
                                   **fields})


def test_results_are_sorted_by_score_best_first(shared_client):
    answer = rerank(shared_client)
    assert answer.status_code == 200
    body = answer.json()
    assert body["model"] == "fast"
    assert [r["index"] for r in body["results"]] == [1, 3, 2, 0]
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    assert all("document" not in r for r in body["results"])
    # Query words (3) with each document's words: 3+3, 3+3, 3+2, 3+2.
    assert body["usage"] == {"prompt_tokens": 22, "total_tokens": 22}
    assert rerank(shared_client, path="/rerank").json()["results"] == body["results"]


def test_top_n_and_return_documents(shared_client):
    body = rerank(shared_client, top_n=2, return_documents=True).json()
    assert [(r["index"], r["document"]) for r in body["results"]] == [
        (1, {"text": "red apple pie"}), (3, {"text": "red apple"})]
    assert len(rerank(shared_client, top_n=50).json()["results"]) == len(DOCUMENTS)


def test_equal_scores_keep_the_documents_order(shared_client):
    body = rerank(shared_client, documents=["x", "y", "z"]).json()
    assert [r["index"] for r in body["results"]] == [0, 1, 2]


@pytest.mark.parametrize("fields, param", [
    ({"documents": []}, "documents"),
    ({"documents": ["a"] * 1025}, "documents"),
    ({"query": ""}, "query"),
    ({"top_n": 0}, "top_n"),
    ({"documents": [{"title": "no text"}]}, "documents[0].text"),
    ({"documents": [3]}, "documents[0]"),
])
def test_bad_bodies_are_400s_naming_the_field(shared_client, fields, param):
    answer = rerank(shared_client, **fields)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


def test_a_missing_query_and_an_unknown_model(shared_client):
    answer = shared_client.post("/v1/rerank", json={"model": "fast", "documents": ["a"]})
    assert (answer.status_code, answer.json()["error"]["param"]) == (400, "query")
    answer = rerank(shared_client, model="nope")
    assert answer.status_code == 404


def test_a_model_that_cannot_rerank_is_a_400_naming_it(client):
    answer = rerank(client, model="unranked")
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "unranked" in error["message"] and error["code"] == "not_supported"


def test_the_routes_are_in_the_schema(shared_client):
    schema = shared_client.get("/schema/openapi.json").json()
    assert "post" in schema["paths"]["/v1/rerank"] and "post" in schema["paths"]["/rerank"]
    fields = schema["components"]["schemas"]["RerankBody"]["properties"]
    assert fields["documents"]["maxItems"] == 1024
