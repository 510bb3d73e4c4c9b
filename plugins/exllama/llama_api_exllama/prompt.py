"""Turning a request into prompt token ids: chat templates (Jinja) and the model's tokenizer.json.

Library-independent: the chat template comes from the model folder's tokenizer_config.json
(or chat_template.jinja / chat_template.json), rendered here with a sandboxed Jinja
environment the way transformers renders it; tokens come from the `tokenizers` library
reading tokenizer.json, the same file exllamav2 and exllamav3 read.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from llama_api import errors

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


def _raise_exception(message):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template plus the special tokens templates expect as variables."""

    def __init__(
        self,
        source: str,
        bos_token: str | None = None,
        eos_token: str | None = None,
        extra_tokens: dict[str, str] | None = None,
    ):
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self.template = env.from_string(source)
        except Exception as exc:
            raise errors.ModelLoadError(f"the chat template does not compile: {exc}") from exc
        self.source = source
        self.variables = {"bos_token": bos_token or "", "eos_token": eos_token or ""}
        self.variables.update(extra_tokens or {})

    @classmethod
    def from_folder(cls, folder: Path, override: str | None = None) -> ChatTemplate | None:
        source = find_chat_template(folder, override)
        if source is None:
            return None
        config = read_json(Path(folder) / "tokenizer_config.json") or {}
        extra = {}
        for name in ("unk_token", "pad_token"):
            text = token_text(config.get(name))
            if text is not None:
                extra[name] = text
        return cls(
            source, token_text(config.get("bos_token")), token_text(config.get("eos_token")), extra
        )

    def render(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs
    ) -> str:
        from jinja2.exceptions import TemplateError

        try:
            return self.template.render(
                messages=normalize_messages(messages),
                add_generation_prompt=add_generation_prompt,
                **self.variables,
                **kwargs,
            )
        except TemplateError as exc:
            raise errors.BadRequest(
                f"the model's chat template rejected the messages: {exc}", param="messages"
            ) from exc
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise errors.BadRequest(
                f"the model's chat template failed on these messages: {exc}", param="messages"
            ) from exc


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Text content parts joined into one string (what most templates expect); images refused."""
    out = []
    for message in messages:
        if not isinstance(message, dict):
            raise errors.BadRequest("each message must be an object", param="messages")
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
                elif isinstance(part, str):
                    texts.append(part)
                else:
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise errors.NotSupported(
                        f"message content of type {kind!r} is not supported "
                        "by the exllama backend (text only)",
                        param="messages",
                    )
            message = {**message, "content": "".join(texts)}
        elif content is None:
            message = {**message, "content": ""}
        out.append(message)
    return out


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
        self.chat_template = ChatTemplate.from_folder(folder, chat_template_override)
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

    def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def completion_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            bad = [
                t
                for t in prompt
                if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < self.vocab_size
            ]
            if bad:
                raise errors.BadRequest(
                    f"token ids out of range 0..{self.vocab_size - 1}: {bad[:5]}", param="prompt"
                )
            return list(prompt)
        # The tokenizer's post-processor adds BOS where the model wants one.
        return self.encode_text(prompt, add_special_tokens=True)

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
        # The rendered text carries its own BOS and special tokens.
        return self.encode_text(self.render_chat(messages), add_special_tokens=False)
