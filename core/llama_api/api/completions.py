"""POST /v1/completions: the request to GenerateRequests, the choices to a response or chunks."""

from __future__ import annotations

from typing import Any

from llama_api.api.choices import Choice
from llama_api.api.openai_common import OpenAIChunks, openai_response, sampling_fields, vary_seed
from llama_api.api.schemas.openai import CompletionRequest
from llama_api.contract.records import Delta, GenerateRequest, TokenLogprob, Usage
from llama_api.errors import BadRequest


def prompts_of(body: CompletionRequest) -> list[str | list[int]]:
    """A prompt may be a string, a list of strings, a token list or a list of token lists."""
    prompt = body.prompt
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
    return [
        GenerateRequest(prompt=prompt, suffix=body.suffix or None, logprobs=body.logprobs,
                        echo=bool(body.echo), parse_special=body.parse_special is not False,
                        **{**fields, "seed": vary_seed(fields["seed"], j)})
        for prompt in prompts_of(body)
        for j in range(body.n or 1)
    ]


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


def completion_response(response_id: str, model: str, choices: list[Choice], usage: Usage) -> dict:
    return openai_response("text_completion", response_id, model, choices, usage, lambda c: {
        "text": "".join(c.text),
        "logprobs": completion_logprobs(c.logprobs) if c.logprobs else None,
    })


class CompletionChunks(OpenAIChunks):
    """`text_completion` chunks; logprob offsets count the text each choice sent before."""

    object = "text_completion"

    def __init__(self, *args, choices: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.offsets = [0] * choices

    def delta(self, index: int, delta: Delta):
        offset = self.offsets[index]
        self.offsets[index] += len(delta.text)
        yield self.chunk([{
            "index": index,
            "text": delta.text,
            "logprobs": completion_logprobs(delta.logprobs, offset) if delta.logprobs else None,
            "finish_reason": delta.finish_reason,
        }])
