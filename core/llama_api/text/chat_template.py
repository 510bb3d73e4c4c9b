"""Chat templates rendered the way Hugging Face renders them, in a sandboxed Jinja.

One environment for every backend that renders a model's own Jinja chat template
(GGUF metadata, `tokenizer_config.json`). jinja2 is imported on first use, in the
worker, so the server process never needs it.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from llama_api import errors


def _raise_exception(message):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """Hugging Face's tojson: plain json.dumps (Jinja's own escapes "<" as "\\u003c")."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def environment():
    """The sandboxed environment: templates can't reach Python internals or mutate inputs."""
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """`{% generation %}...{% endgeneration %}` (SmolLM3-style templates) marks the
        assistant's part for training masks; rendering a prompt keeps its body as is."""

        tags = {"generation"}  # noqa: RUF012 - jinja2's Extension API: a class-level set

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols", GenerationTag])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


class ChatTemplate:
    """A compiled chat template and the special-token variables templates expect."""

    def __init__(self, source: str, **variables: str):
        from jinja2 import TemplateError

        try:
            self.template = environment().from_string(source)
        except TemplateError as exc:
            raise errors.ModelLoadError(f"the chat template does not compile: {exc}") from exc
        self.source = source
        self.variables = {"bos_token": "", "eos_token": "", **variables}

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
               **kwargs: Any) -> str:
        """The prompt text; a template that refuses the messages is the client's 400."""
        from jinja2 import TemplateError
        from jinja2.exceptions import SecurityError

        try:
            return self.template.render(messages=messages,
                                        add_generation_prompt=add_generation_prompt,
                                        **self.variables, **kwargs)
        except SecurityError as exc:
            raise errors.BadRequest(f"the model's chat template tried something unsafe: {exc}",
                                    param="messages") from exc
        except TemplateError as exc:
            raise errors.BadRequest(f"the model's chat template rejected the messages: {exc}",
                                    param="messages") from exc
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise errors.BadRequest(f"the model's chat template failed on these messages: {exc}",
                                    param="messages") from exc
