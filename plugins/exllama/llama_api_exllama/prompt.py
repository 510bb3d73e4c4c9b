"""Turning a request into prompt token ids: chat templates (Jinja) and the model's tokenizer.json.

Library-independent: the chat template comes from the model folder's tokenizer_config.json
(or chat_template.jinja / chat_template.json), rendered by the core's `ChatTemplate` (the
one sandboxed Hugging Face-style environment); tokens come from the `tokenizers` library
reading tokenizer.json, the same file exllamav2 and exllamav3 read.
"""

from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path
from typing import Any

from llama_api import errors
from llama_api.text.chat_template import ChatTemplate
from llama_api.text.plain_text import Shield
from llama_api_exllama.discovery import read_json


def token_text(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def find_chat_template(folder: Path, override: str | None = None) -> str | None:
    """The chat template text: the override (text or a file path), else the model folder's."""
    if override is not None:
        candidate = Path(override).expanduser()
        if "{" not in override and len(override) < 4096:
            try:
                if candidate.is_file():
                    return candidate.read_text(encoding="utf-8")
            except OSError:
                pass
            raise errors.ModelLoadError(
                f"chat_template file not found: {override}", param="chat_template"
            )
        return override
    folder = Path(folder)
    config = read_json(folder / "tokenizer_config.json") or {}
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if isinstance(template, str) and template.strip():
        return template
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    json_file = read_json(folder / "chat_template.json") or {}
    template = json_file.get("chat_template")
    if isinstance(template, str) and template.strip():
        return template
    return None


def load_chat_template(folder: Path, override: str | None = None) -> ChatTemplate | None:
    """The model's chat template in the core's sandboxed environment, with its special tokens."""
    source = find_chat_template(folder, override)
    if source is None:
        return None
    config = read_json(Path(folder) / "tokenizer_config.json") or {}
    variables = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        text = token_text(config.get(name))
        if text is not None:
            variables[name] = text
    return ChatTemplate(source, **variables)


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


class PromptBuilder:
    """Encodes completion prompts and chat messages into token ids for one model folder."""

    def __init__(self, folder: Path, chat_template_override: str | None = None):
        folder = Path(folder)
        self.folder = folder
        tokenizer_json = folder / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise errors.ModelLoadError(
                f"{folder} has no tokenizer.json: exllamav2 (0.3+) and exllamav3 read only "
                "tokenizer.json (save the tokenizer with transformers to write one)"
            )
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        except Exception as exc:
            raise errors.ModelLoadError(f"tokenizer.json does not load: {exc}") from exc
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self._encoding = threading.Lock()  # `encode_special_tokens` is the tokenizer's state
        self.chat_template = load_chat_template(folder, chat_template_override)
        self.stop_token_ids = self._stop_token_ids()
        generation_config = read_json(folder / "generation_config.json") or {}
        self.generation_defaults = generation_config

    def _stop_token_ids(self) -> list[int]:
        ids: list[int] = []
        config = read_json(self.folder / "config.json") or {}
        ids += _ids(config.get("eos_token_id"))
        text_config = config.get("text_config")
        if isinstance(text_config, dict):
            ids += _ids(text_config.get("eos_token_id"))
        ids += _ids((read_json(self.folder / "generation_config.json") or {}).get("eos_token_id"))
        eos = token_text((read_json(self.folder / "tokenizer_config.json") or {}).get("eos_token"))
        if eos is not None:
            token_id = self.tokenizer.token_to_id(eos)
            if token_id is not None:
                ids.append(token_id)
        return sorted(set(ids))

    def encode_text(self, text: str, add_special_tokens: bool = True,
                    parse_special: bool = True) -> list[int]:
        """Token ids; `parse_special` False reads special tokens' spellings as text."""
        with self._encoding:
            self.tokenizer.encode_special_tokens = not parse_special
            try:
                return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
            finally:
                self.tokenizer.encode_special_tokens = False

    @cached_property
    def shield(self) -> Shield:
        """Keeps what clients wrote plain text (`llama_api.text.plain_text`)."""
        return Shield(token.content for token in
                      self.tokenizer.get_added_tokens_decoder().values() if token.special)

    def completion_ids(self, prompt: str | list[int], parse_special: bool = True) -> list[int]:
        if isinstance(prompt, list):
            # The core checked they are ids >= 0; the vocabulary is this model's.
            bad = [t for t in prompt if t >= self.vocab_size]
            if bad:
                raise errors.BadRequest(
                    f"token ids out of range 0..{self.vocab_size - 1}: {bad[:5]}", param="prompt"
                )
            return list(prompt)
        # The tokenizer's post-processor adds BOS where the model wants one.
        return self.encode_text(prompt, add_special_tokens=True, parse_special=parse_special)

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        if self.chat_template is None:
            raise errors.BadRequest(
                "this model has no chat template (none in tokenizer_config.json, "
                "chat_template.jinja or chat_template.json): use /v1/completions, or give the "
                "model a chat_template option",
                param="messages",
            )
        return self.chat_template.render(messages, add_generation_prompt=True)

    def chat_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        # The rendered text carries its own BOS and special tokens; the client's text in it
        # is plain, even where it spells a special token.
        protected, swapped = self.shield.protect(messages)
        ids: list[int] = []
        for piece in self.shield.pieces(self.render_chat(protected), swapped):
            ids += self.encode_text(piece.text, add_special_tokens=False,
                                    parse_special=piece.special)
        return ids
