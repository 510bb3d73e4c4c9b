"""Chat prompts: the core's template environment, compiled once per model."""

from __future__ import annotations

import pytest

import llama_api_llamacpp as plugin
from llama_api.contract.records import LoadContext, ModelSpec
from llama_api.text.chat_template import ChatTemplate
from llama_api_llamacpp.prompts import PromptBuilder
from llama_api_llamacpp.tiny import write_tiny_gguf

# SmolLM3-style: the assistant's turns are wrapped in {% generation %} for training masks.
GENERATION_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}"
    "{% else %}{{ m.content }}{% endif %}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_a_template_with_generation_tags_renders():
    prompts = PromptBuilder("m", ChatTemplate(GENERATION_TEMPLATE))
    prompt = prompts.render([{"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "hello"},
                             {"role": "user", "content": "bye"}])
    text, stops = prompt.text, prompt.stops
    assert text == "<|user|>hi<|end|><|assistant|>hello<|end|><|user|>bye<|end|><|assistant|>"
    assert stops == []


def test_a_gguf_with_generation_tags_serves_chat(tmp_path, collect):
    path = write_tiny_gguf(tmp_path / "gen.gguf", chat_template=GENERATION_TEMPLATE)
    model = plugin.load_model(spec=ModelSpec(id="gen", backend="llamacpp", path=str(path),
                                             options={"n_parallel": 1}),
                              context=LoadContext(n_threads=1)).model
    try:
        _, deltas = collect(model, messages=[{"role": "user", "content": "hi"}],
                            max_tokens=3, temperature=0.0)
        assert deltas[-1].usage.prompt_tokens == len(
            model.prompt_tokens("<|user|>hi<|end|><|assistant|>"))
    finally:
        plugin.unload_model(model=model)


def test_the_gguf_template_is_compiled_once(tiny_path, monkeypatch):
    from jinja2 import Environment

    from llama_api_llamacpp.tiny import CHATML_TEMPLATE

    compiled = []
    real = Environment.from_string

    def counting(self, source, *args, **kwargs):
        compiled.append(source)
        return real(self, source, *args, **kwargs)

    monkeypatch.setattr(Environment, "from_string", counting)
    model = plugin.load_model(spec=ModelSpec(id="once", backend="llamacpp", path=str(tiny_path),
                                             options={"n_parallel": 1}),
                              context=LoadContext(n_threads=1)).model
    try:
        assert compiled.count(CHATML_TEMPLATE) == 1
        assert model.prompts.template.source == CHATML_TEMPLATE
    finally:
        plugin.unload_model(model=model)
    # and llama-cpp-python's own formatter is back for anyone else in the process
    from llama_cpp import llama_chat_format

    assert llama_chat_format.Jinja2ChatFormatter.__name__ == "Jinja2ChatFormatter"


def test_a_model_without_a_template_cannot_chat():
    from llama_api import errors

    with pytest.raises(errors.BadRequest, match="no chat template"):
        PromptBuilder("m").render([{"role": "user", "content": "hi"}])
