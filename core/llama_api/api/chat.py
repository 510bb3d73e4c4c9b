"""POST /v1/chat/completions: the request to normalized GenerateRequests (messages as text,
tools, tool_choice, response_format), the choices to a response or chunks."""

from __future__ import annotations

from typing import Any

from llama_api.api.choices import Choice
from llama_api.api.images import place
from llama_api.api.openai_common import (
    OpenAIChunks,
    openai_response,
    sampling_fields,
    think_for,
    vary_seed,
)
from llama_api.api.schemas.openai import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionDefinition,
    FunctionName,
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
)
from llama_api.contract.records import (
    Delta,
    GenerateRequest,
    ResponseFormat,
    TokenLogprob,
    ToolChoice,
    Usage,
)
from llama_api.errors import BadRequest, NotSupported


def chat_requests(body: ChatCompletionRequest) -> list[GenerateRequest]:
    """One GenerateRequest per choice, every field normalized for the backend."""
    images: list = []  # ImageSources until routes' `images.prepare`
    messages = [message_dict(i, message, images) for i, message in enumerate(body.messages)]
    tools, tool_choice, tool_name = tool_fields(body)
    if body.top_logprobs and not body.logprobs:
        raise BadRequest("`top_logprobs` needs `logprobs: true`.", param="top_logprobs")
    fields = sampling_fields(body)
    if body.max_completion_tokens is not None:
        fields["max_tokens"] = body.max_completion_tokens
    return [
        GenerateRequest(
            messages=messages,
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            tools=tools,
            tool_choice=tool_choice,
            tool_name=tool_name,
            parallel_tool_calls=body.parallel_tool_calls is not False,
            response_format=response_format(body),
            split_reasoning=body.reasoning_format != "none",
            think=think_for(body.reasoning_effort),
            images=images,
            **{**fields, "seed": vary_seed(fields["seed"], j)},
        )
        for j in range(body.n or 1)
    ]


def message_dict(i: int, message: ChatMessage, images: list) -> dict[str, Any]:
    """A message as the backend gets it: `content` is text (an image part: its marker, the
    part kept in `images`), absent fields are left out."""
    result: dict[str, Any] = {"role": message.role,
                              "content": message_text(i, message.content, images)}
    for name in ("name", "tool_calls", "tool_call_id"):
        value = getattr(message, name)
        if value is not None:
            result[name] = value
    return result


def message_text(i: int, content, images: list) -> str:
    """A string, or the parts joined (images as markers); other parts (audio) are refused."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
        elif part.type == "text":
            texts.append(part.text or "")
        elif part.type == "image_url" and part.image_url is not None:
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            texts.append(place(images, f"messages[{i}].content[{j}]", url=url))
        else:
            raise NotSupported(f"`messages[{i}].content` has a {part.type!r} part; only text "
                               "parts are supported.", param=f"messages[{i}].content")
    return "".join(texts)


def tool_dict(function: FunctionDefinition) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": function.name}
    if function.description is not None:
        spec["description"] = function.description
    if function.parameters is not None:
        spec["parameters"] = function.parameters
    return {"type": "function", "function": spec}


def tool_fields(body: ChatCompletionRequest
                ) -> tuple[list[dict[str, Any]] | None, ToolChoice | None, str | None]:
    """tools, tool_choice and the forced tool's name; the deprecated `functions` and
    `function_call` become the same."""
    if body.tools is None and body.functions:
        functions, choice, param = body.functions, body.function_call, "function_call"
    else:
        functions = [tool.function for tool in body.tools or []]
        choice, param = body.tool_choice, "tool_choice"
    if isinstance(choice, NamedToolChoice):
        choice = choice.function
    if not functions:
        if choice is None or choice in ("none", "auto"):
            return None, None, None
        raise BadRequest(f"`{param}` asks for a tool call but no tools were given.", param=param)
    tools = [tool_dict(function) for function in functions]
    if isinstance(choice, FunctionName):
        names = [function.name for function in functions]
        if choice.name not in names:
            raise BadRequest(f"`{param}` names function {choice.name!r}, which is not among "
                             f"the tools ({', '.join(names)}).", param=param)
        return tools, "function", choice.name
    return tools, choice, None


def response_format(body: ChatCompletionRequest) -> ResponseFormat | None:
    fmt = body.response_format
    if isinstance(fmt, JsonObjectFormat):
        return ResponseFormat(type="json_object", schema=fmt.schema)
    if isinstance(fmt, JsonSchemaFormat):
        return ResponseFormat(type="json_schema", schema=fmt.json_schema.schema)
    return None  # absent, or "text"


# -- the answer -----------------------------------------------------------------------

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


def chat_message(choice: Choice) -> dict:
    """The assistant message; `content` is null when the answer is only tool calls."""
    text = "".join(choice.text)
    message = {"role": "assistant", "content": text if text or not choice.tool_calls else None}
    if choice.reasoning:
        message["reasoning_content"] = "".join(choice.reasoning)
    if choice.tool_calls:
        message["tool_calls"] = [choice.tool_calls[i] for i in sorted(choice.tool_calls)]
    return message


def chat_response(response_id: str, model: str, choices: list[Choice], usage: Usage) -> dict:
    return openai_response("chat.completion", response_id, model, choices, usage, lambda c: {
        "message": chat_message(c),
        "logprobs": chat_logprobs(c.logprobs) if c.logprobs else None,
    })


def delta_body(delta: Delta) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if delta.reasoning:
        body["reasoning_content"] = delta.reasoning
    if delta.text:
        body["content"] = delta.text
    if delta.tool_calls:
        body["tool_calls"] = [
            {
                "index": call.index,
                **({"id": call.id, "type": "function"} if call.id else {}),
                "function": {**({"name": call.name} if call.name else {}),
                             "arguments": call.arguments},
            }
            for call in delta.tool_calls
        ]
    return body


class ChatChunks(OpenAIChunks):
    """`chat.completion.chunk`s; each choice opens with an assistant-role chunk."""

    object = "chat.completion.chunk"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.started: set[int] = set()

    def delta(self, index: int, delta: Delta):
        if index not in self.started:
            self.started.add(index)
            yield self.chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                               "logprobs": None, "finish_reason": None}])
        yield self.chunk([{
            "index": index,
            "delta": delta_body(delta),
            "logprobs": chat_logprobs(delta.logprobs) if delta.logprobs else None,
            "finish_reason": delta.finish_reason,
        }])
