"""POST /tokenize and /detokenize: a text or chat messages to the model's token ids, and back.

Answers as llama.cpp's and vLLM's servers do: `{"tokens", "count", "max_model_len"}`, the
tokens as `[{"id", "piece"}]` with `with_pieces`; detokenize answers `{"prompt"}`.
"""

from __future__ import annotations

from typing import Any

from llama_api.api.chat import message_dict, tool_dict
from llama_api.api.schemas.tokens import TokenizeBody
from llama_api.contract.records import TokenizeRequest, TokenizeResult
from llama_api.errors import BackendUnavailable, BadRequest


def tokenize_request(body: TokenizeBody) -> TokenizeRequest:
    """Exactly one of `prompt` (or `content`) and `messages`."""
    texts = [text for text in (body.prompt, body.content) if text is not None]
    if len(texts) + (body.messages is not None) != 1:
        raise BadRequest("Send exactly one of `prompt` (or `content`) and `messages`.",
                         param="prompt")
    if body.tools and body.messages is None:
        raise BadRequest("`tools` go with `messages`.", param="tools")
    messages = tools = None
    images: list = []  # ImageSources until the route's `images.prepare`
    if body.messages is not None:
        messages = [message_dict(i, message, images) for i, message in enumerate(body.messages)]
        tools = [tool_dict(tool.function) for tool in body.tools] if body.tools else None
    return TokenizeRequest(
        text=texts[0] if texts else None,
        messages=messages,
        tools=tools,
        add_special_tokens=body.add_special_tokens is not False,
        parse_special=body.parse_special is not False,
        with_pieces=bool(body.with_pieces),
        images=images,
    )


def tokenize_response(request: TokenizeRequest, result: TokenizeResult) -> dict[str, Any]:
    tokens: list[Any] = list(result.tokens)
    if request.with_pieces:
        pieces = result.pieces or []
        if len(pieces) != len(tokens):
            raise BackendUnavailable(f"the backend spelled {len(pieces)} of {len(tokens)} "
                                     "tokens", code="backend_error")
        tokens = [{"id": token, "piece": piece} for token, piece in zip(tokens, pieces)]
    answer: dict[str, Any] = {"tokens": tokens, "count": len(tokens)}
    if result.max_model_len is not None:
        answer["max_model_len"] = result.max_model_len
    return answer


def detokenize_response(text: str) -> dict[str, Any]:
    return {"prompt": text}
