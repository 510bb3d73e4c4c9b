"""Tokenize and detokenize with the GGUF's own vocabulary, exactly as prompts are read:
chat messages rendered by the model's PromptBuilder (what clients wrote as plain text), text
with BOS as `prompt_tokens` adds it, special tokens in the text parsed as such unless
`parse_special` is off (as a completion's prompt).

Runs in the worker; touches only the vocabulary (no context), so it needs no lock.
"""

from __future__ import annotations

import ctypes

from llama_api.contract.records import TokenizeResult


def tokenize(model, request) -> TokenizeResult:
    if request.messages is not None:
        prompt = model.prompts.render(request.messages, request.tools)
        tokens = model.chat_items(prompt, getattr(request, "images", None),
                                  add_bos=request.add_special_tokens)
    else:
        tokens = model.prompt_tokens(request.text or "", special=request.parse_special,
                                     add_bos=request.add_special_tokens)
    # An image's positions count as the tokens the model reads; their id is -1 (no token).
    tokens = [token if isinstance(token, int) else -1 for token in tokens]
    pieces = [spelling(model, token) if token >= 0 else "<image>" for token in tokens
              ] if request.with_pieces else None
    return TokenizeResult(tokens=tokens, pieces=pieces, max_model_len=model.n_ctx)


def spelling(model, token: int) -> str | list[int]:
    """A token's text, special tokens included; its bytes when they are not UTF-8 alone."""
    raw = model.piece(token, special=True)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


def detokenize(model, tokens: list[int]) -> str:
    model.check_ids(tokens, "tokens")
    if not tokens:
        return ""
    lib = model.lib
    ids = (lib.llama_token * len(tokens))(*tokens)
    size = 8 * len(tokens) + 16
    while True:
        buffer = ctypes.create_string_buffer(size)
        # remove_special=False, unparse_special=True: special tokens spelled as their text.
        n = lib.llama_detokenize(model.vocab, ids, len(tokens), buffer, size, False, True)
        if n >= 0:
            break
        size = -n + 1
    text = buffer.raw[:n].decode("utf-8", errors="replace")
    # WordPiece spells a word start with a space: the text's first word has none to give.
    if lib.llama_vocab_type(model.vocab) == lib.LLAMA_VOCAB_TYPE_WPM and text.startswith(" "):
        text = text[1:]
    return text
