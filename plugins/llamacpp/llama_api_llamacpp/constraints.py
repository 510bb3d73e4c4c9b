"""Constraints: `response_format`, `tool_choice` and `grammar` to one grammar object."""

from __future__ import annotations

from dataclasses import dataclass, field

from llama_api import errors
from llama_api_llamacpp.json_schema import schema_to_gbnf


@dataclass
class Constraint:
    """What a request's output must look like.

    `grammar`: a llama.cpp grammar the sampler enforces (None: free text).
    `tool_mode`: None (plain text), "auto", "required" or "function" (forces `tool_name`).
    `tools`: the tools the prompt shows the model (None: none).
    """

    grammar: object = None
    tool_mode: str | None = None
    tool_name: str | None = None
    tools: list[dict] | None = None
    tool_names: set[str] = field(default_factory=set)

    @property
    def streams_text(self) -> bool:
        """Stop strings apply only to text answers (a call's JSON is never cut)."""
        return self.tool_mode in (None, "auto")


class Grammars:
    """Builds grammars for one model's vocabulary, checked by llama.cpp's parser first."""

    def __init__(self, lib, vocab):
        self.lib = lib
        self.vocab = vocab

    def constraint(self, request) -> Constraint:
        tools = request.tools or None if request.messages is not None else None
        choice = request.tool_choice or "auto"
        if tools and choice != "none":
            names = {t["function"]["name"] for t in tools}
            if choice == "function":
                (tool,) = [t for t in tools if t["function"]["name"] == request.tool_name]
                grammar = self.schema(_parameters(tool), "tools")
                return Constraint(grammar, "function", request.tool_name, tools, names)
            if choice == "required":
                calls = [{
                    "type": "object",
                    "properties": {"name": {"const": t["function"]["name"]},
                                   "arguments": _parameters(t)},
                    "required": ["name", "arguments"],
                } for t in tools]
                schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
                return Constraint(self.schema(schema, "tools"), "required", None, tools, names)
            return Constraint(None, "auto", None, tools, names)
        return Constraint(grammar=self._output_grammar(request))

    def _output_grammar(self, request):
        fmt = request.response_format
        if fmt is not None:
            if fmt.schema is not None:
                return self.schema(fmt.schema, "response_format")
            from llama_cpp.llama_grammar import JSON_GBNF

            return self.gbnf(JSON_GBNF, "response_format")
        grammar = (request.extra or {}).get("grammar")
        return self.gbnf(str(grammar), "grammar") if grammar else None

    def gbnf(self, gbnf: str, what: str):
        """A LlamaGrammar, checked by llama.cpp's parser first (a bad one would crash)."""
        from llama_cpp.llama_grammar import LlamaGrammar

        sampler = self.lib.llama_sampler_init_grammar(self.vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            raise errors.BadRequest(f"llama.cpp could not parse the grammar for {what}",
                                    param=what)
        self.lib.llama_sampler_free(sampler)
        return LlamaGrammar.from_string(gbnf, verbose=False)

    def schema(self, schema: dict, what: str):
        return self.gbnf(schema_to_gbnf(schema, what), what)


def _parameters(tool: dict) -> dict:
    return tool["function"].get("parameters") or {"type": "object"}
