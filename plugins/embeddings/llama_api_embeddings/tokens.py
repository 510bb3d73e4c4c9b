"""Tokenize and detokenize with a transformers model's own (Hugging Face) tokenizer.

Serves both the encoders and the cross-encoders: anything with `tokenizer`,
`tokenizer_lock`, `chat_template`, `max_length` and `spec` (see `loading.Setup`). Imported only in the worker.
"""

from __future__ import annotations

from llama_api import errors
from llama_api.contract.records import TokenizeResult


def chat_text(model, request) -> str:
    """Messages rendered with the chat template (compiled at load) and the generation
    prompt."""
    if model.chat_template is None:
        raise errors.BadRequest(f"model {model.spec.id} has no chat template to render "
                                "messages with; send `prompt`", param="messages")
    extra = {"tools": request.tools} if request.tools else {}
    return model.chat_template.render(request.messages, add_generation_prompt=True, **extra)


def tokenize(model, request) -> TokenizeResult:
    text = chat_text(model, request) if request.messages is not None else request.text or ""
    tokenizer = model.tokenizer
    with model.tokenizer_lock:  # HF fast tokenizers are not safe to share across threads
        ids = list(tokenizer(text, add_special_tokens=request.add_special_tokens,
                             truncation=False, return_attention_mask=False,
                             return_token_type_ids=False)["input_ids"])
        pieces = [tokenizer.decode([token]) for token in ids] if request.with_pieces else None
    return TokenizeResult(tokens=ids, pieces=pieces, max_model_len=model.max_length)


def detokenize(model, tokens: list[int]) -> str:
    size = len(model.tokenizer)
    bad = [token for token in tokens if token >= size]
    if bad:
        raise errors.BadRequest(f"token id {bad[0]} is out of range: model {model.spec.id} "
                                f"has {size} tokens", param="tokens")
    with model.tokenizer_lock:
        return model.tokenizer.decode(tokens)
