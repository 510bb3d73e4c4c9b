"""Images in, in the worker: a tiny random-weight language model and a tiny random-weight
projector (tiny_vision.py), through the plugin's hooks and its batch engine."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from llama_api import errors
from llama_api.contract.records import (
    IMAGE_MARKER,
    GenerateRequest,
    ImageInput,
    LoadContext,
    ModelSpec,
    TokenizeRequest,
)

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
pytest.importorskip("PIL", reason="Pillow is not installed")

import llama_api_llamacpp as plugin
from llama_api_llamacpp.memory import estimate
from llama_api_llamacpp.tiny import EXACT_OPTIONS
from llama_api_llamacpp.tiny_vision import IMAGE_TOKENS, write_tiny_vision_model
from llama_api_llamacpp.vision import ImageSlot

pytestmark = pytest.mark.usefixtures("mtmd")  # conftest.py: skips without the library


def image(color, size=(40, 32), stripes=0) -> ImageInput:
    """Decoded pixels, as the core sends them (api/images.py)."""
    width, height = size
    rows = []
    for y in range(height):
        for x in range(width):
            flip = stripes and (x // stripes) % 2
            rows.append(bytes(255 - c if flip else c for c in color))
    rgb = b"".join(rows)
    return ImageInput(width=width, height=height, rgb=rgb,
                      digest=hashlib.sha256(rgb).hexdigest())


RED, BLUE = image((250, 10, 10)), image((10, 10, 250), stripes=4)
QUESTION = f"{IMAGE_MARKER}What is in the picture?"


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vision")
    write_tiny_vision_model(folder)
    return folder


def load(path, model_id="tiny-vision", **options):
    spec = plugin.gguf_spec(path, model_id)
    spec.options.update(options)
    return plugin.load_model(spec=spec, context=LoadContext(n_threads=1)).model


@pytest.fixture(scope="module")
def vision(vision_dir):
    model = load(vision_dir / "tiny-vision.gguf", n_parallel=2, **EXACT_OPTIONS)
    yield model
    plugin.unload_model(model=model)


def ask(model, images, text=QUESTION, cancelled=None, **fields):
    request = GenerateRequest(messages=[{"role": "user", "content": text}], images=images,
                              max_tokens=fields.pop("max_tokens", 12), temperature=0.0,
                              **fields)
    deltas = list(plugin.generate(model=model, request=request,
                                  cancelled=cancelled or threading.Event()))
    return "".join(d.text for d in deltas), deltas[-1]


def test_discovery_pairs_the_projector_beside_the_model(vision_dir):
    specs = {spec.id: spec for spec in plugin.discover_models(models_dir=vision_dir)}
    assert "mmproj-tiny-vision" not in specs  # a projector is no model
    spec = specs["tiny-vision"]
    assert spec.meta["capabilities"] == ["vision"]
    assert spec.options["mmproj"] == str(vision_dir / "mmproj-tiny-vision.gguf")


def test_the_memory_estimate_counts_the_projector(vision_dir):
    spec = plugin.gguf_spec(vision_dir / "tiny-vision.gguf", "tiny-vision")
    with_projector = estimate(spec, gpu=False)[0]
    spec.options.pop("mmproj")
    projector = (vision_dir / "mmproj-tiny-vision.gguf").stat().st_size
    assert with_projector - estimate(spec, gpu=False)[0] >= projector


def test_the_loaded_model_says_it_takes_images(vision):
    assert vision.info["capabilities"] == ["vision"]
    assert vision.engine is not None


def test_different_images_give_different_answers_and_the_same_image_the_same(vision):
    red, _ = ask(vision, [RED])
    blue, _ = ask(vision, [BLUE])
    assert red != blue
    assert ask(vision, [RED])[0] == red


def test_prompt_tokens_count_the_image_positions(vision):
    text_only = plugin.tokenize(model=vision, request=TokenizeRequest(
        messages=[{"role": "user", "content": "What is in the picture?"}]))
    with_image = plugin.tokenize(model=vision, request=TokenizeRequest(
        messages=[{"role": "user", "content": QUESTION}], images=[RED]))
    assert with_image.tokens.count(-1) == IMAGE_TOKENS
    assert len(with_image.tokens) > len(text_only.tokens) + IMAGE_TOKENS  # + begin/end marks
    _, last = ask(vision, [RED])
    assert last.usage.prompt_tokens == len(with_image.tokens)


def test_several_images_and_images_in_earlier_turns(vision):
    messages = [{"role": "user", "content": f"{IMAGE_MARKER} and {IMAGE_MARKER}"},
                {"role": "assistant", "content": "two pictures"},
                {"role": "user", "content": f"now {IMAGE_MARKER}"}]
    request = GenerateRequest(messages=messages, images=[RED, BLUE, RED], max_tokens=6,
                              temperature=0.0)
    deltas = list(plugin.generate(model=vision, request=request, cancelled=threading.Event()))
    assert deltas[-1].usage.prompt_tokens > 3 * IMAGE_TOKENS
    swapped = GenerateRequest(messages=messages, images=[BLUE, RED, BLUE], max_tokens=6,
                              temperature=0.0)
    result = list(plugin.generate(model=vision, request=swapped, cancelled=threading.Event()))
    assert "".join(d.text for d in result) != "".join(d.text for d in deltas)


def test_the_prefix_cache_never_matches_across_images(vision):
    engine = vision.engine
    red = ask(vision, [RED], text="hello world " * 8 + QUESTION)[0]
    before = engine.reused_tokens
    blue = ask(vision, [BLUE], text="hello world " * 8 + QUESTION)[0]
    # what was reused is the text before the image, never a cell of the other image
    prompt = vision.chat_items(vision.prompts.render(
        [{"role": "user", "content": "hello world " * 8 + QUESTION}]), [BLUE])
    first_image = next(i for i, item in enumerate(prompt) if isinstance(item, ImageSlot))
    assert engine.reused_tokens - before <= first_image
    assert blue != red
    # the same image again reuses its cells, and answers as before
    before = engine.reused_tokens
    assert ask(vision, [BLUE], text="hello world " * 8 + QUESTION)[0] == blue
    assert engine.reused_tokens - before > first_image + IMAGE_TOKENS


def test_concurrent_requests_with_different_images_or_none_answer_as_each_alone(vision):
    def one(picture):
        if picture is None:  # text only, in the same batches
            return ask(vision, [], text="hello world", max_tokens=24)[0]
        return ask(vision, [picture], max_tokens=24)[0]

    pictures = [RED, BLUE, None]
    alone = [one(picture) for picture in pictures]
    for _ in range(2):
        with ThreadPoolExecutor(3) as pool:
            assert list(pool.map(one, pictures)) == alone


def test_a_cancelled_image_request_ends_and_the_next_one_answers(vision):
    cancelled = threading.Event()
    request = GenerateRequest(messages=[{"role": "user", "content": QUESTION}], images=[RED],
                              max_tokens=500, temperature=1.0, seed=1, logit_bias={2: -100})
    for count, delta in enumerate(plugin.generate(model=vision, request=request,
                                                  cancelled=cancelled)):
        if count == 2:
            cancelled.set()
    assert delta.usage.completion_tokens < 20
    assert ask(vision, [RED])[0]


def test_one_sequence_vision_model_runs_on_the_engine(vision_dir):
    model = load(vision_dir / "tiny-vision.gguf", model_id="tiny-vision-1", n_parallel=1,
                 **EXACT_OPTIONS)
    try:
        assert model.slots == 1 and model.engine is not None
        assert ask(model, [RED])[1].usage.prompt_tokens > IMAGE_TOKENS
    finally:
        plugin.unload_model(model=model)


def test_images_to_a_model_without_projector_are_refused(tiny_path):
    model = load(tiny_path, model_id="tiny-text", n_parallel=1)
    try:
        with pytest.raises(errors.NotSupported, match="tiny-text"):
            ask(model, [RED])
    finally:
        plugin.unload_model(model=model)


def test_a_projector_that_does_not_fit_the_model_fails_the_load(vision_dir, tmp_path):
    from llama_api_llamacpp.tiny import write_tiny_gguf

    wide = write_tiny_gguf(tmp_path / "wide.gguf", n_embd=128)
    spec = ModelSpec(id="wide", backend="llamacpp", path=str(wide),
                     options={"mmproj": str(vision_dir / "mmproj-tiny-vision.gguf")})
    with pytest.raises(errors.ModelLoadError, match="projector"):
        plugin.load_model(spec=spec, context=LoadContext(n_threads=1))
