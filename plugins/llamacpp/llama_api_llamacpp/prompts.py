"""Chat prompts: messages (and tools) rendered with the model's chat template."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import NamedTuple

from llama_api import errors
from llama_api.text.chat_template import ChatTemplate
from llama_api.text.plain_text import Piece, Shield
from llama_api_llamacpp.tools import TOOL_CLOSE, TOOL_OPEN


class ChatPrompt(NamedTuple):
    """A rendered chat prompt: the template's text (special tokens parsed) and what clients
    wrote (plain text) in order, and the stop strings the format adds."""

    pieces: list[Piece]
    stops: list[str]

    @property
    def text(self) -> str:
        return "".join(piece.text for piece in self.pieces)


class PromptBuilder:
    """Renders chat messages the way one model reads them.

    `template`: the model's Jinja chat template (Hugging Face conventions), or
    `formatter`: a llama-cpp-python chat format function; neither: the model can't chat.
    `control_spellings`: the vocabulary's control tokens as text, asked for on the first
    render (client text holding one stays plain text: `llama_api.text.plain_text`).
    """

    def __init__(self, model_id: str, template: ChatTemplate | None = None, formatter=None,
                 control_spellings: Callable[[], Iterable[str]] = tuple):
        self.model_id = model_id
        self.template = template
        self.formatter = formatter
        self._control_spellings = control_spellings
        # A template that reads `tools` gets them; others get them described in a system
        # message, and tool traffic spelled out as text.
        self.knows_tools = bool(template is not None and "tools" in template.source)

    @property
    def can_chat(self) -> bool:
        return self.template is not None or self.formatter is not None

    @cached_property
    def shield(self) -> Shield:
        return Shield(self._control_spellings())

    def render(self, messages: list[dict], tools: list[dict] | None = None,
               forced: str | None = None, think: bool | None = None) -> ChatPrompt:
        """The prompt, with what the client sent kept apart as plain text. `think`: the
        template's `enable_thinking` (Qwen3's convention), when the request says."""
        if not self.can_chat:
            raise errors.BadRequest(
                f"model {self.model_id} has no chat template in its GGUF file, so it can't "
                "serve chat completions; use /v1/completions, or set the model option "
                "`chat_template` (Jinja) or `chat_format` (e.g. chatml)",
                param="messages",
            )
        (messages, tools, forced), swapped = self.shield.protect((messages, tools, forced))
        messages = normalize_messages(messages, self.knows_tools)
        if tools and not self.knows_tools:
            system = tool_system_prompt(tools, forced)
            if messages and messages[0].get("role") == "system":
                messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + system}
            else:
                messages.insert(0, {"role": "system", "content": system})
        if self.formatter is not None:
            result = self.formatter(messages=messages)
            stop = result.stop or []
            return ChatPrompt(self.shield.pieces(result.prompt, swapped),
                              [stop] if isinstance(stop, str) else list(stop))
        extra = {"tools": tools} if tools and self.knows_tools else {}
        if think is not None:
            extra["enable_thinking"] = think
        text = self.template.render(messages, add_generation_prompt=True, **extra)
        return ChatPrompt(self.shield.pieces(text, swapped), [])


def named_format(model_id: str, name: str):
    """A llama-cpp-python chat format function (`chatml`, `llama-2`, ...)."""
    from llama_cpp import llama_chat_format

    for attr in (f"format_{name.replace('-', '_')}", f"format_{name.replace('-', '')}"):
        formatter = getattr(llama_chat_format, attr, None)
        if formatter is not None:
            return formatter
    raise errors.ModelLoadError(f"{model_id}: unknown chat_format {name!r}")


def tool_system_prompt(tools: list[dict], forced: str | None) -> str:
    functions = [t["function"] for t in tools]
    lines = [
        "You can call these functions (JSON schema of each):",
        json.dumps(functions, ensure_ascii=False),
        ("To call a function, answer only with "
         f'{TOOL_OPEN}{{"name": "<function name>", "arguments": {{<arguments>}}}}{TOOL_CLOSE}'),
    ]
    if forced:
        lines.append(f"Call the function {forced} now.")
    return "\n".join(lines)


def normalize_messages(messages: list[dict], template_knows_tools: bool) -> list[dict]:
    """Messages as templates expect them; tool traffic spelled out for templates that
    don't know tools."""
    out = []
    for message in messages:
        m = dict(message)
        role = m.get("role", "user")
        if role == "developer":
            m["role"] = role = "system"
        m["content"] = m.get("content") or ""
        if template_knows_tools and m.get("tool_calls"):
            # Templates expect arguments as a mapping (Hugging Face's convention).
            m["tool_calls"] = [_arguments_as_dict(call) for call in m["tool_calls"]]
        if not template_knows_tools:
            if role == "assistant" and m.get("tool_calls"):
                calls = [_call_as_text(call) for call in m.pop("tool_calls")]
                m["content"] = (m["content"] + "\n" if m["content"] else "") + "\n".join(calls)
            elif role == "tool":
                name = m.get("name") or m.get("tool_call_id") or "tool"
                m = {"role": "user", "content": f"Result of {name}: {m['content']}"}
        out.append(m)
    return out


def _call_as_text(call: dict) -> str:
    fn = call.get("function", {})
    args = fn.get("arguments", "{}")
    try:
        args = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        pass
    return TOOL_OPEN + json.dumps({"name": fn.get("name"), "arguments": args},
                                  ensure_ascii=False) + TOOL_CLOSE


def _arguments_as_dict(call: dict) -> dict:
    fn = call.get("function")
    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
        try:
            args = json.loads(fn["arguments"])
        except ValueError:
            return call
        if isinstance(args, dict):
            return {**call, "function": {**fn, "arguments": args}}
    return call
