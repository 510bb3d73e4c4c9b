"""From OpenAI requests to backend requests, and from backend deltas to OpenAI responses."""

from __future__ import annotations

import time
import uuid
from typing import Any

from llama_api.errors import BadRequest
from llama_api.schemas import (
    EXTRA_SAMPLING_FIELDS,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
)
from llama_api.types import Delta, GenerateRequest, TokenLogprob, Usage

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
MAX_N = 16
MAX_STOP = 16
MAX_LOGPROBS = 20


def check_range(name: str, value, low=None, high=None) -> None:
    if value is None:
        return
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"`{name}` must be {bounds}, got {value}.", param=name)


def sampling_fields(body: SamplingFields) -> dict[str, Any]:
    """Validate the fields shared by completions and chat; return GenerateRequest kwargs."""
    check_range("max_tokens", body.max_tokens, 1)
    check_range("temperature", body.temperature, 0.0)
    check_range("top_p", body.top_p, 0.0, 1.0)
    check_range("min_p", body.min_p, 0.0, 1.0)
    check_range("top_k", body.top_k, 0)
    check_range("presence_penalty", body.presence_penalty, -2.0, 2.0)
    check_range("frequency_penalty", body.frequency_penalty, -2.0, 2.0)
    check_range("repeat_penalty", body.repeat_penalty, 0.0)
    check_range("n", body.n, 1, MAX_N)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP:
        raise BadRequest(f"`stop` takes at most {MAX_STOP} strings.", param="stop")
    stop = [s for s in stop if s]
    extra = {
        name: getattr(body, name)
        for name in EXTRA_SAMPLING_FIELDS
        if getattr(body, name) is not None
    }
    return dict(
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        repeat_penalty=body.repeat_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        stop=stop,
        seed=body.seed,
        logit_bias=body.logit_bias,
        extra=extra,
    )


def completion_prompts(prompt) -> list[str | list[int]]:
    """A prompt may be a string, a list of strings, a token list or a list of token lists."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise BadRequest("`prompt` must not be an empty list.", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    if not (all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt)):
        raise BadRequest("`prompt` must be a string, a list of strings, a list of token ids "
                         "or a list of token id lists.", param="prompt")
    return list(prompt)


def completion_requests(body: CompletionRequest) -> list[GenerateRequest]:
    """One GenerateRequest per (prompt, choice); choice index = prompt index * n + j."""
    fields = sampling_fields(body)
    check_range("logprobs", body.logprobs, 0, MAX_LOGPROBS)
    if body.suffix:
        raise BadRequest("`suffix` is not supported.", param="suffix")
    requests = []
    n = body.n or 1
    for prompt in completion_prompts(body.prompt):
        for j in range(n):
            requests.append(GenerateRequest(
                prompt=prompt,
                logprobs=body.logprobs,
                echo=bool(body.echo),
                **{**fields, "seed": vary_seed(fields["seed"], j)},
            ))
    return requests


def vary_seed(seed: int | None, choice: int) -> int | None:
    """Choices of one request differ even with a fixed seed, and stay reproducible."""
    return None if seed is None else seed + choice


def check_messages(messages: list[dict[str, Any]]) -> None:
    if not messages:
        raise BadRequest("`messages` must contain at least one message.", param="messages")
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(
                f"`messages[{i}].role` must be one of {sorted(ROLES)}, got {role!r}.",
                param=f"messages[{i}].role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(
                f"`messages[{i}].content` must be a string or a list of content parts.",
                param=f"messages[{i}].content",
            )


def chat_requests(body: ChatCompletionRequest) -> list[GenerateRequest]:
    check_messages(body.messages)
    fields = sampling_fields(body)
    if body.max_completion_tokens is not None:
        check_range("max_completion_tokens", body.max_completion_tokens, 1)
        fields["max_tokens"] = body.max_completion_tokens
    check_range("top_logprobs", body.top_logprobs, 0, MAX_LOGPROBS)
    if body.top_logprobs and not body.logprobs:
        raise BadRequest("`top_logprobs` needs `logprobs: true`.", param="top_logprobs")
    tools = body.tools
    tool_choice = body.tool_choice
    if tools is None and body.functions:  # the deprecated form of tools
        tools = [{"type": "function", "function": f} for f in body.functions]
        fc = body.function_call
        tool_choice = {"type": "function", "function": fc} if isinstance(fc, dict) else fc
    if tools is not None:
        for i, tool in enumerate(tools):
            if not isinstance(tool.get("function"), dict) or not tool["function"].get("name"):
                raise BadRequest(f"`tools[{i}].function.name` is required.",
                                 param=f"tools[{i}].function")
    if isinstance(tool_choice, str) and tool_choice not in ("none", "auto", "required"):
        raise BadRequest("`tool_choice` must be none, auto, required or a function.",
                         param="tool_choice")
    if body.response_format is not None:
        kind = body.response_format.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            raise BadRequest("`response_format.type` must be text, json_object or json_schema.",
                             param="response_format.type")
        if kind == "json_schema" and not isinstance(body.response_format.get("json_schema"), dict):
            raise BadRequest("`response_format.json_schema` is required for type json_schema.",
                             param="response_format.json_schema")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return [
        GenerateRequest(
            messages=body.messages,
            logprobs=logprobs,
            tools=tools,
            tool_choice=tool_choice,
            response_format=body.response_format,
            **{**fields, "seed": vary_seed(fields["seed"], j)},
        )
        for j in range(body.n or 1)
    ]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


class Choice:
    """What one choice has produced so far."""

    def __init__(self, index: int):
        self.index = index
        self.text: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage = Usage()

    def add(self, delta: Delta) -> None:
        self.text.append(delta.text)
        if delta.logprobs:
            self.logprobs.extend(delta.logprobs)
        for call in delta.tool_calls or []:
            merged = self.tool_calls.setdefault(call.index, {
                "id": call.id or new_id("call"), "type": "function",
                "function": {"name": "", "arguments": ""},
            })
            if call.id:
                merged["id"] = call.id
            if call.name:
                merged["function"]["name"] += call.name
            merged["function"]["arguments"] += call.arguments
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
        if delta.usage is not None:
            self.usage = delta.usage


def total_usage(choices: list[Choice], prompts: int) -> Usage:
    """Prompt tokens count once per prompt, completion tokens once per choice."""
    per_prompt = max(1, len(choices) // max(1, prompts))
    return Usage(
        prompt_tokens=sum(c.usage.prompt_tokens for c in choices[::per_prompt]),
        completion_tokens=sum(c.usage.completion_tokens for c in choices),
    )


# -- logprobs in the two OpenAI shapes ------------------------------------------------

def token_bytes(token: TokenLogprob) -> list[int]:
    return token.bytes if token.bytes is not None else list(token.token.encode())


def chat_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [
        {
            "token": t.token,
            "logprob": t.logprob,
            "bytes": token_bytes(t),
            "top_logprobs": [
                {"token": top.token, "logprob": top.logprob, "bytes": list(top.token.encode())}
                for top in t.top
            ],
        }
        for t in tokens
    ]}


def completion_logprobs(tokens: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{top.token: top.logprob for top in t.top} for t in tokens],
        "text_offset": offsets,
    }


# -- whole responses ------------------------------------------------------------------

def chat_message(choice: Choice) -> dict:
    """The assistant message; `content` is null when the answer is only tool calls."""
    text = "".join(choice.text)
    message = {"role": "assistant", "content": text if text or not choice.tool_calls else None}
    if choice.tool_calls:
        message["tool_calls"] = [choice.tool_calls[i] for i in sorted(choice.tool_calls)]
    return message


def chat_response(response_id: str, model: str, choices: list[Choice], usage: Usage) -> dict:
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": c.index,
                "message": chat_message(c),
                "logprobs": chat_logprobs(c.logprobs) if c.logprobs else None,
                "finish_reason": c.finish_reason or "stop",
            }
            for c in choices
        ],
        "usage": usage_dict(usage),
    }


def completion_response(response_id: str, model: str, choices: list[Choice], usage: Usage) -> dict:
    return {
        "id": response_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": c.index,
                "text": "".join(c.text),
                "logprobs": completion_logprobs(c.logprobs) if c.logprobs else None,
                "finish_reason": c.finish_reason or "stop",
            }
            for c in choices
        ],
        "usage": usage_dict(usage),
    }


# -- streamed chunks ------------------------------------------------------------------

def chat_chunk(response_id: str, model: str, created: int, index: int, delta: Delta | None,
               first: bool = False) -> dict:
    body: dict[str, Any] = {}
    if first:
        body = {"role": "assistant", "content": ""}
    elif delta is not None:
        if delta.text:
            body["content"] = delta.text
        if delta.tool_calls:
            body["tool_calls"] = [
                {
                    "index": call.index,
                    **({"id": call.id, "type": "function"} if call.id else {}),
                    "function": {
                        **({"name": call.name} if call.name else {}),
                        "arguments": call.arguments,
                    },
                }
                for call in delta.tool_calls
            ]
    choice: dict[str, Any] = {
        "index": index,
        "delta": body,
        "logprobs": chat_logprobs(delta.logprobs) if delta is not None and delta.logprobs else None,
        "finish_reason": delta.finish_reason if delta is not None else None,
    }
    return {
        "id": response_id, "object": "chat.completion.chunk", "created": created,
        "model": model, "choices": [choice],
    }


def completion_chunk(response_id: str, model: str, created: int, index: int, delta: Delta,
                     offset: int) -> dict:
    return {
        "id": response_id, "object": "text_completion", "created": created, "model": model,
        "choices": [{
            "index": index,
            "text": delta.text,
            "logprobs": completion_logprobs(delta.logprobs, offset) if delta.logprobs else None,
            "finish_reason": delta.finish_reason,
        }],
    }


def usage_chunk(response_id: str, model: str, created: int, obj: str, usage: Usage) -> dict:
    return {"id": response_id, "object": obj, "created": created, "model": model,
            "choices": [], "usage": usage_dict(usage)}
