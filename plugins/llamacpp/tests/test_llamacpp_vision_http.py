"""Images through the HTTP APIs: a real server, real workers, the `openai` and `anthropic`
clients, a tiny vision GGUF with its projector (tiny_vision.py) beside a text-only one."""

from __future__ import annotations

import base64
import os
import signal

import httpx
import pytest

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
pytest.importorskip("PIL", reason="Pillow is not installed")

from llama_api.testing import serve
from llama_api_llamacpp.tiny import write_tiny_gguf
from llama_api_llamacpp.tiny_vision import png_image, write_tiny_vision_model

pytestmark = pytest.mark.usefixtures("mtmd")  # conftest.py: skips without the library

VISION, TEXT = "tiny-vision", "tiny-text"
RED = png_image((250, 10, 10))
BLUE = png_image((10, 10, 250), pattern=3)


def data_url(raw: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(raw).decode()


def chat_content(raw: bytes, text: str = "What is in the picture?") -> list[dict]:
    return [{"type": "image_url", "image_url": {"url": data_url(raw)}},
            {"type": "text", "text": text}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    write_tiny_vision_model(folder / "vision")
    write_tiny_gguf(folder / f"{TEXT}.gguf", seed=3)
    with serve("--models-dir", str(folder), "--threads", "1", "--max-workers", "2",
               env={"LLAMA_API_PLUGINS": "llamacpp"}) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.v1.removesuffix("/v1"), api_key="unused",
                               max_retries=0, timeout=120)


def chat(client, raw: bytes, stream: bool = False, **fields):
    args = dict(model=VISION, temperature=0, max_tokens=10,
                messages=[{"role": "user", "content": chat_content(raw)}], **fields)
    if not stream:
        return client.chat.completions.create(**args)
    return "".join(chunk.choices[0].delta.content or ""
                   for chunk in client.chat.completions.create(stream=True, **args)
                   if chunk.choices)


def test_models_list_says_which_model_takes_images(client):
    cards = {model.id: model for model in client.models.list().data}
    assert cards[VISION].capabilities == ["vision"]
    assert cards[TEXT].capabilities == []
    assert "mmproj-tiny-vision" not in cards


def test_chat_completions_read_the_image_streamed_and_not(client):
    red = chat(client, RED)
    assert red.usage.prompt_tokens > 16
    assert chat(client, RED, stream=True) == red.choices[0].message.content
    assert chat(client, BLUE).choices[0].message.content != red.choices[0].message.content


def test_anthropic_messages_read_base64_images_streamed_and_not(claude):
    content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                            "data": base64.b64encode(RED).decode()}},
               {"type": "text", "text": "What is in the picture?"}]
    messages = [{"role": "user", "content": content}]
    reply = claude.messages.create(model=VISION, max_tokens=10, messages=messages,
                                   extra_body={"temperature": 0})
    with claude.messages.stream(model=VISION, max_tokens=10, messages=messages,
                                extra_body={"temperature": 0}) as stream:
        streamed = "".join(stream.text_stream)
    assert streamed == reply.content[0].text
    counted = claude.messages.count_tokens(model=VISION, messages=messages)
    assert counted.input_tokens == reply.usage.input_tokens > 16


def test_responses_read_input_images_streamed_and_not(client):
    items = [{"role": "user", "content": [
        {"type": "input_image", "image_url": data_url(RED)},
        {"type": "input_text", "text": "What is in the picture?"}]}]
    reply = client.responses.create(model=VISION, input=items, max_output_tokens=10,
                                    temperature=0, store=False)
    done = [event for event in client.responses.create(
        model=VISION, input=items, max_output_tokens=10, temperature=0, store=False,
        stream=True) if event.type in ("response.completed", "response.incomplete")]
    assert done[0].response.output_text == reply.output_text
    assert reply.usage.input_tokens > 16


def test_a_later_turn_of_a_stored_response_reads_its_image_again(client):
    first = client.responses.create(model=VISION, max_output_tokens=4, temperature=0, input=[
        {"role": "user", "content": [{"type": "input_image", "image_url": data_url(RED)},
                                     {"type": "input_text", "text": "look"}]}])
    later = client.responses.create(model=VISION, max_output_tokens=4, temperature=0,
                                    previous_response_id=first.id, input="and now?")
    assert later.usage.input_tokens > first.usage.input_tokens + 4


def test_an_anthropic_url_source_needs_fetching_on(claude):
    with pytest.raises(anthropic.BadRequestError, match="allow-image-urls") as caught:
        claude.messages.create(model=VISION, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}])
    assert "messages[0].content[0]" in str(caught.value)


def test_tokenize_counts_the_image_positions(server):
    body = {"model": VISION, "messages": [{"role": "user", "content": chat_content(RED)}]}
    answer = httpx.post(f"{server.url}/tokenize", json=body, timeout=60).json()
    assert answer["tokens"].count(-1) == 16


def bad(client, content, model=VISION):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, max_tokens=4,
                                       messages=[{"role": "user", "content": content}])
    return caught.value


@pytest.mark.parametrize("url, says", [
    (data_url(b"not a picture"), "not a picture"),
    (data_url(png_image(size=(64, 64), pattern=3)[:77]), "corrupt or truncated"),
    (data_url(png_image(fmt="BMP"), "bmp"), "unsupported image format BMP"),
    ("https://example.com/cat.png", "--allow-image-urls"),
    ("data:image/png;base64,@@@", "not valid base64"),
])
def test_bad_images_are_400s_naming_the_part_and_the_worker_stays(client, server, url, says):
    pid = server.health()["workers"].get(VISION)
    error = bad(client, [{"type": "text", "text": "look"},
                         {"type": "image_url", "image_url": {"url": url}}])
    assert says in error.message and error.body["param"] == "messages[0].content[1]"
    assert pid is None or server.health()["workers"][VISION] == pid


def test_an_image_to_a_text_model_is_a_400_naming_the_model(client, claude):
    assert "model tiny-text does not take images" in bad(client, chat_content(RED), TEXT).message
    with pytest.raises(anthropic.BadRequestError, match="tiny-text"):
        claude.messages.create(model=TEXT, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(RED).decode()}}]}])


def test_a_decompression_bomb_is_a_400(client):
    from PIL import Image

    bomb = Image.new("1", (12000, 5000))
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "llama-api-bomb.png")
    bomb.save(path)
    with open(path, "rb") as file:
        raw = file.read()
    os.unlink(path)
    assert "pixels are allowed" in bad(client, chat_content(raw)).message


def test_a_killed_worker_costs_only_its_image_request(client, server):
    chat(client, RED)  # loaded
    pid = server.health()["workers"][VISION]
    stream = client.chat.completions.create(
        model=VISION, max_tokens=1500, stream=True, logit_bias={"2": -100},
        messages=[{"role": "user", "content": chat_content(BLUE)}])
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for n, _chunk in enumerate(stream):
            if n == 2:
                os.kill(pid, signal.SIGKILL)
    # the text model's worker serves on; the vision model loads again and answers
    assert client.chat.completions.create(model=TEXT, max_tokens=4, messages=[
        {"role": "user", "content": "hello"}]).choices[0].message.content is not None
    assert chat(client, RED).usage.prompt_tokens > 16
