"""POST /v1/rerank: a query and documents to relevance scores, answered as Jina's and
Cohere's rerank APIs answer (results sorted by score, best first)."""

from __future__ import annotations

from typing import Any

from llama_api.api.choices import new_id
from llama_api.api.schemas.tokens import RerankBody
from llama_api.contract.records import RerankRequest, RerankResult


def document_texts(body: RerankBody) -> list[str]:
    return [doc if isinstance(doc, str) else doc.text for doc in body.documents]


def rerank_request(body: RerankBody) -> RerankRequest:
    return RerankRequest(query=body.query, documents=document_texts(body))


def rerank_response(body: RerankBody, request: RerankRequest,
                    result: RerankResult) -> dict[str, Any]:
    # Best first; equal scores keep the documents' order.
    order = sorted(range(len(result.scores)), key=lambda i: -result.scores[i])
    if body.top_n is not None:
        order = order[:body.top_n]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": float(result.scores[i])}
        if body.return_documents:
            item["document"] = {"text": request.documents[i]}
        results.append(item)
    tokens = result.prompt_tokens
    return {
        "id": new_id("rerank"),
        "model": body.model,
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
