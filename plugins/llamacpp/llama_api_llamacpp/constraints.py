"""Constraints: `response_format`, `tool_choice` and `grammar` to one grammar object."""

from __future__ import annotations

from dataclasses import dataclass, field

from llama_api import errors
from llama_api_llamacpp.grammar_limits import check_grammar
from llama_api_llamacpp.json_schema import schema_to_gbnf


@dataclass
class Constraint:
    """What a request's output must look like.

    `grammar`: a llama.cpp grammar the sampler enforces (None: free text).
    `tool_mode`: None (plain text), "auto", "required" or "function" (forces `tool_name`).
    `tools`: the tools the prompt shows the model (None: none).
    `json`: the grammar holds the output to JSON (`response_format`, a forced call).
    `parallel`: several calls may come in one answer (`parallel_tool_calls`).
    """

    grammar: object = None
    tool_mode: str | None = None
    tool_name: str | None = None
    tools: list[dict] | None = None
    tool_names: set[str] = field(default_factory=set)
    json: bool = False
    parallel: bool = True

    @property
    def streams_text(self) -> bool:
        """Stop strings apply only to text answers (a call's JSON is never cut)."""
        return self.tool_mode in (None, "auto")

    @property
    def free_form(self) -> bool:
        """The model may write what it likes first (think, say something): not JSON."""
        return self.streams_text and not self.json


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
            # GenerateRequest has no field for it yet: the core may pass it in `extra`.
            parallel = request.parallel_tool_calls
            if choice == "function":
                (tool,) = [t for t in tools if t["function"]["name"] == request.tool_name]
                grammar = self.schema(_parameters(tool), "tools")
                return Constraint(grammar, "function", request.tool_name, tools, names,
                                  json=True, parallel=False)
            if choice == "required":
                grammar = self.schema(calls_schema(tools, parallel), "tools")
                return Constraint(grammar, "required", None, tools, names, json=True,
                                  parallel=parallel)
            return Constraint(None, "auto", None, tools, names, parallel=parallel)
        fmt = request.response_format
        if fmt is not None:
            if fmt.schema is not None:
                return Constraint(self.schema(fmt.schema, "response_format"), json=True)
            from llama_cpp.llama_grammar import JSON_GBNF

            return Constraint(self.gbnf(JSON_GBNF, "response_format"), json=True)
        grammar = (request.extra or {}).get("grammar")
        return Constraint(self.gbnf(str(grammar), "grammar") if grammar else None)

    def gbnf(self, gbnf: str, what: str):
        """A LlamaGrammar, checked against our limits (a grammar past them could crash the
        worker or exhaust the machine) and by llama.cpp's parser first."""
        from llama_cpp.llama_grammar import LlamaGrammar

        check_grammar(gbnf, what)
        sampler = self.lib.llama_sampler_init_grammar(self.vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            raise errors.BadRequest(f"llama.cpp could not parse the grammar for {what}",
                                    param=what)
        self.lib.llama_sampler_free(sampler)
        return LlamaGrammar.from_string(gbnf, verbose=False)

    def schema(self, schema: dict, what: str):
        return self.gbnf(schema_to_gbnf(schema, what), what)


def calls_schema(tools: list[dict], parallel: bool) -> dict:
    """The JSON of a required call: `{"name", "arguments"}` of one of the tools, or with
    parallel calls a non-empty array of them."""
    calls = [{
        "type": "object",
        "properties": {"name": {"const": t["function"]["name"]},
                       "arguments": _parameters(t)},
        "required": ["name", "arguments"],
    } for t in tools]
    call = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {"type": "array", "items": call, "minItems": 1} if parallel else call


def _parameters(tool: dict) -> dict:
    return tool["function"].get("parameters") or {"type": "object"}
