"""Chat prompts: render the model's own Jinja chat template; tool prompts and tool-call parsing."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from llama_api import errors

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


def _raise(message):
    raise errors.BadRequest(f"chat template error: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """Hugging Face's tojson: plain json.dumps (Jinja's own escapes "<" as "\\u003c")."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def compile_template(source: str):
    """A Jinja template compiled the way Hugging Face renders chat templates."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = _tojson
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise errors.ModelLoadError(f"the chat template does not compile: {exc}") from exc


def text_content(content) -> str:
    """OpenAI content (a string or a list of parts) as plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append(part.get("text", ""))
        elif isinstance(part, str):
            parts.append(part)
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise errors.NotSupported(f"message content of type {kind!r} is not supported "
                                      "by this model (text only)", param="messages")
    return "".join(parts)


def tool_system_prompt(tools: list[dict], forced: str | None) -> str:
    functions = [t.get("function", t) for t in tools]
    lines = [
        "You can call these functions (JSON schema of each):",
        json.dumps(functions, ensure_ascii=False),
        "To call a function, answer only with "
        f'{TOOL_OPEN}{{"name": "<function name>", "arguments": {{<arguments>}}}}{TOOL_CLOSE}',
    ]
    if forced:
        lines.append(f"Call the function {forced} now.")
    return "\n".join(lines)


def normalize_messages(messages: list[dict], template_knows_tools: bool) -> list[dict]:
    """Plain-text messages; tool traffic spelled out for templates that don't know tools."""
    out = []
    for message in messages:
        m = dict(message)
        role = m.get("role", "user")
        if role == "developer":
            m["role"] = role = "system"
        m["content"] = text_content(m.get("content"))
        if template_knows_tools and m.get("tool_calls"):
            # Templates expect arguments as a mapping (Hugging Face's convention).
            m["tool_calls"] = [_arguments_as_dict(call) for call in m["tool_calls"]]
        if not template_knows_tools:
            if role == "assistant" and m.get("tool_calls"):
                calls = []
                for call in m.pop("tool_calls"):
                    fn = call.get("function", {})
                    args = fn.get("arguments", "{}")
                    try:
                        args = json.loads(args) if isinstance(args, str) else args
                    except ValueError:
                        pass
                    calls.append(TOOL_OPEN + json.dumps(
                        {"name": fn.get("name"), "arguments": args}, ensure_ascii=False)
                        + TOOL_CLOSE)
                m["content"] = (m["content"] + "\n" if m["content"] else "") + "\n".join(calls)
            elif role == "tool":
                name = m.get("name") or m.get("tool_call_id") or "tool"
                m = {"role": "user", "content": f"Result of {name}: {m['content']}"}
        out.append(m)
    return out


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


def call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def parse_tool_calls(text: str, tool_names: set[str]) -> list[dict] | None:
    """Tool calls in generated text (`<tool_call>{...}</tool_call>` blocks or one bare JSON
    object), as [{"name", "arguments" (a JSON string)}]; None when the text is not a call."""
    stripped = text.strip()
    blobs = []
    if TOOL_OPEN in stripped:
        for chunk in stripped.split(TOOL_OPEN)[1:]:
            blobs.append(chunk.split(TOOL_CLOSE)[0].strip())
    elif stripped.startswith(("{", "[")):
        blobs.append(stripped)
    else:
        return None
    objects = []
    decoder = json.JSONDecoder()
    for blob in blobs:
        try:
            obj, _ = decoder.raw_decode(blob)
        except ValueError:
            return None
        # a list of calls ([TOOL_CALLS] [...] in Mistral's format)
        objects.extend(obj if isinstance(obj, list) else [obj])
    calls = []
    for obj in objects:
        if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
            obj = obj["function"]  # OpenAI's own shape
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        if tool_names and obj["name"] not in tool_names:
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            arguments = args
        else:
            arguments = json.dumps(args, ensure_ascii=False)
        calls.append({"name": obj["name"], "arguments": arguments})
    return calls or None
