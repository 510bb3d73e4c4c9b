"""The backend conformance kit: one contract for our backends and third parties'.

A plugin's tests enable it with one import and one subclass:

    from llama_api.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        generates = True     # what the backend can do; each capability it lacks must be
        embeds = False       # refused with NotSupported naming the model
        tokenizes = False
        reranks = False

        @pytest.fixture
        def model_spec(self, tmp_path): return ModelSpec(id="m", backend="mine", path=..., plugin="mine")

        @pytest.fixture
        def bad_model_spec(self, tmp_path): ...  # a corrupt model file

`model_spec.plugin` is the plugin's entry point name. The hooks that run in the server
(register, discover, estimate) are called through pluggy as the server calls them; the
others run in a real worker subprocess. The load and load-error tests start their own
worker; the others share one loaded worker per test class and model spec (a model that
imports torch takes seconds to load, a check takes milliseconds), so a spec fixture that
returns the same spec each time loads it once. `models_dir` (default: the folder of
`model_spec.path`) is where discovery must find the model; set `discovers = False` for a
backend whose models are not found in a folder. `ServerSideConformance` holds only the
server-side hooks (for a plugin whose models need a device the test machine lacks).
"""

from __future__ import annotations

import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.from_thread
import msgspec
import pytest

from llama_api import errors
from llama_api.contract.records import (
    EmbedRequest,
    GenerateRequest,
    ModelSpec,
    RerankRequest,
    TokenizeRequest,
)
from llama_api.testing.processes import pid_exists
from llama_api.workers.handle import WorkerHandle
from llama_api.workers.plugins import Plugins


@asynccontextmanager
async def running_worker(spec: ModelSpec, n_threads: int = 1):
    """A loaded worker for the duration of the block; stopped (and reaped) after."""
    with errors.unwrapped():  # show the test the error itself
        async with anyio.create_task_group() as task_group:
            worker = WorkerHandle(spec, n_threads, on_exit=lambda _: None)
            await worker.start(task_group)
            try:
                yield worker
            finally:
                await worker.stop()
            task_group.cancel_scope.cancel()


async def generate_all(worker: WorkerHandle, request: GenerateRequest):
    deltas = [delta async for delta in worker.generate(request)]
    return "".join(d.text for d in deltas), deltas


class SharedWorkers:
    """Loaded workers that outlive one test, by model spec, on an event loop of their own (a
    blocking portal): a test stays a plain function and hands its coroutine to `run`."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal):
        self._portal = portal
        self._running: dict[bytes, tuple[WorkerHandle, object]] = {}

    def worker(self, spec: ModelSpec) -> WorkerHandle:
        """A loaded worker for `spec`: the one kept from an earlier test if it still runs."""
        key = msgspec.json.encode(spec)
        kept = self._running.get(key)
        if kept is not None and kept[0].alive:
            return kept[0]
        if kept is not None:
            self._close(key)
        context = self._portal.wrap_async_context_manager(running_worker(spec))
        worker = context.__enter__()
        self._running[key] = (worker, context)
        return worker

    def run(self, function, *args):
        """`await function(*args)` on the workers' event loop; its result or its error."""
        with errors.unwrapped():
            return self._portal.call(function, *args)

    def _close(self, key: bytes) -> None:
        _worker, context = self._running.pop(key)
        context.__exit__(None, None, None)

    def close(self) -> None:
        for key in list(self._running):
            self._close(key)


class ServerSideConformance:
    """The hooks a plugin runs in the server process: registration, discovery, estimate.

    Needs only a `model_spec` (no device, no worker): a plugin whose models need hardware
    this machine lacks can still hold its server side to the contract.
    """

    discovers: bool = True  # discovery finds `model_spec` in `models_dir`

    @pytest.fixture
    def model_spec(self) -> ModelSpec:
        raise NotImplementedError("subclasses provide a `model_spec` fixture")

    @pytest.fixture
    def models_dir(self, model_spec) -> Path:
        return Path(model_spec.path).parent

    # -- in the server: registration, discovery, estimate ----------------------------

    def test_plugin_loads_under_the_contract_and_registers_the_backend(self, model_spec):
        plugins = Plugins(only=model_spec.plugin)
        assert plugins.broken == {}
        assert plugins.names() == [model_spec.plugin]
        assert plugins.backends().get(model_spec.backend) == model_spec.plugin
        plugins.hook.prepare_worker()  # what every worker of the plugin runs first

    def test_discovery_finds_the_model(self, model_spec, models_dir):
        if not self.discovers:
            pytest.skip("the backend's models are not discovered from a folder")
        plugins = Plugins(only=model_spec.plugin)
        found = [spec for specs in plugins.hook.discover_models(models_dir=models_dir)
                 for spec in specs]
        assert all(isinstance(spec, ModelSpec) for spec in found)
        assert set(plugins.backends()) >= {spec.backend for spec in found}
        wanted = Path(model_spec.path).resolve()
        assert any(Path(spec.path).resolve() == wanted for spec in found), (
            f"discovery in {models_dir} did not list {model_spec.path}")

    def test_estimate_is_host_and_gpu_bytes_or_none(self, model_spec):
        plugins = Plugins(only=model_spec.plugin)
        for gpu in (False, True):
            estimate = plugins.estimate_memory(model_spec, gpu)
            if estimate is None:
                continue
            host, on_gpu = estimate
            assert isinstance(host, int) and isinstance(on_gpu, int)
            assert host >= 0 and on_gpu >= 0
            if not gpu:
                assert on_gpu == 0, "without a GPU budget nothing is counted on a GPU"


class BackendConformance(ServerSideConformance):
    """What every backend must do. Set the capabilities to what the backend does."""

    generates: bool = True
    embeds: bool = False
    tokenizes: bool = True
    reranks: bool = False
    prompt = "Once upon a time"
    # Lowercase plain words, so that uncased tokenizers spell it back as it was.
    tokenize_text = "hello world, once upon a time"
    # Enough tokens that a generation is still running when the test cancels it.
    long_max_tokens = 512

    @pytest.fixture
    def bad_model_spec(self) -> ModelSpec:
        raise NotImplementedError("subclasses provide a `bad_model_spec` fixture")

    @pytest.fixture(scope="class")
    @classmethod
    def shared_workers(cls):
        with anyio.from_thread.start_blocking_portal() as portal:
            workers = SharedWorkers(portal)
            try:
                yield workers
            finally:
                workers.close()

    @pytest.fixture
    def run_on_worker(self, shared_workers, model_spec):
        """`run_on_worker(main)`: `await main(worker)` on the shared loaded worker."""
        return lambda main: shared_workers.run(main, shared_workers.worker(model_spec))

    def greedy(self, **fields) -> GenerateRequest:
        return GenerateRequest(prompt=self.prompt, temperature=0.0, seed=1, **fields)

    def refused(self, model_spec, run, main) -> None:
        """The one rule for a capability a backend lacks: NotSupported naming the model."""
        with pytest.raises(errors.NotSupported) as info:
            run(main)
        assert model_spec.id in info.value.message

    # -- load and unload -------------------------------------------------------------

    def test_load_reports_slots_and_unload_ends_the_process(self, model_spec):
        async def main():
            async with running_worker(model_spec) as worker:
                assert worker.slots >= 1
                assert pid_exists(worker.pid)
                pid = worker.pid
            return pid

        pid = anyio.run(main)
        assert not pid_exists(pid), "the worker process outlived its unload"

    def test_bad_model_file_is_a_clear_load_error(self, bad_model_spec):
        async def main():
            async with running_worker(bad_model_spec):
                pass

        with pytest.raises(errors.ModelLoadError) as info:
            anyio.run(main)
        name = os.path.basename(bad_model_spec.path.rstrip("/"))
        assert name in info.value.message

    # -- generation ------------------------------------------------------------------

    def test_generate_ends_with_finish_reason_and_usage(self, model_spec, run_on_worker):
        async def main(worker):
            return await generate_all(worker, self.greedy(max_tokens=8))

        if not self.generates:
            self.refused(model_spec, run_on_worker, main)
            return
        _text, deltas = run_on_worker(main)
        last = deltas[-1]
        assert last.finish_reason in ("stop", "length")
        assert last.usage is not None and last.usage.prompt_tokens > 0
        assert 1 <= last.usage.completion_tokens <= 8
        if last.finish_reason == "length":
            assert last.usage.completion_tokens == 8

    def test_stream_sends_text_as_it_is_generated(self, model_spec, run_on_worker):
        if not self.generates:
            pytest.skip("backend does not generate")

        async def main(worker):
            arrivals = []
            async for delta in worker.generate(self.greedy(max_tokens=32)):
                arrivals.append((time.perf_counter(), delta))
            return arrivals

        arrivals = run_on_worker(main)
        last = arrivals[-1][1]
        if last.usage.completion_tokens < 2:
            pytest.skip("the model stopped after one token")
        texts = [delta for _, delta in arrivals if delta.text]
        assert len(texts) >= 2, "all text arrived in one piece: nothing was streamed"
        assert arrivals[0][0] < arrivals[-1][0]

    def test_greedy_generation_is_deterministic(self, model_spec, run_on_worker):
        if not self.generates:
            pytest.skip("backend does not generate")

        async def main(worker):
            first, _ = await generate_all(worker, self.greedy(max_tokens=16))
            second, _ = await generate_all(worker, self.greedy(max_tokens=16))
            return first, second

        first, second = run_on_worker(main)
        assert first == second

    def test_stop_string_is_not_sent_and_ends_generation(self, model_spec, run_on_worker):
        if not self.generates:
            pytest.skip("backend does not generate")

        async def main(worker):
            full, _ = await generate_all(worker, self.greedy(max_tokens=24))
            stripped = full.strip()
            if len(stripped) < 6:
                pytest.skip("output too short to pick a stop string from")
            middle = full.index(stripped) + len(stripped) // 2
            stop = full[middle:middle + 2]
            text, deltas = await generate_all(worker, self.greedy(max_tokens=24, stop=[stop]))
            return full, stop, text, deltas

        full, stop, text, deltas = run_on_worker(main)
        assert stop not in text
        assert full.startswith(text)
        assert deltas[-1].finish_reason == "stop"

    def test_cancel_stops_generation_and_the_worker_stays_usable(self, model_spec, run_on_worker):
        if not self.generates:
            pytest.skip("backend does not generate")

        async def main(worker):
            stream = worker.generate(self.greedy(max_tokens=self.long_max_tokens))
            async for _ in stream:
                break  # the client went away after the first piece
            await stream.aclose()
            with anyio.fail_after(60):
                _text, deltas = await generate_all(worker, self.greedy(max_tokens=4))
            return deltas

        deltas = run_on_worker(main)
        assert deltas[-1].finish_reason in ("stop", "length")

    # -- embeddings ------------------------------------------------------------------

    def test_embed(self, model_spec, run_on_worker):
        inputs = ["hello world", "a second, longer sentence to embed"]

        async def main(worker):
            return await worker.embed(EmbedRequest(input=inputs))

        if not self.embeds:
            self.refused(model_spec, run_on_worker, main)
            return
        result = run_on_worker(main)
        assert result.count == len(inputs)
        assert result.dims > 0
        assert len(result.data) == result.count * result.dims * 4
        assert result.prompt_tokens >= len(inputs)

    # -- tokenize and rerank ---------------------------------------------------------

    def test_tokenize_then_detokenize_gives_the_text_back(self, model_spec, run_on_worker):
        async def main(worker):
            plain = await worker.tokenize(TokenizeRequest(
                text=self.tokenize_text, add_special_tokens=False, with_pieces=True))
            special = await worker.tokenize(TokenizeRequest(text=self.tokenize_text))
            return plain, special, await worker.detokenize(plain.tokens)

        if not self.tokenizes:
            self.refused(model_spec, run_on_worker, main)
            return
        plain, special, text = run_on_worker(main)
        assert plain.tokens and all(token >= 0 for token in plain.tokens)
        assert plain.pieces is not None and len(plain.pieces) == len(plain.tokens)
        assert text == self.tokenize_text
        assert len(special.tokens) >= len(plain.tokens)

    def test_rerank_scores_every_document(self, model_spec, run_on_worker):
        documents = ["a first document", "a second, longer document to score"]

        async def main(worker):
            return await worker.rerank(RerankRequest(query="which document",
                                                     documents=documents))

        if not self.reranks:
            self.refused(model_spec, run_on_worker, main)
            return
        result = run_on_worker(main)
        assert len(result.scores) == len(documents)
        assert all(isinstance(score, float) for score in result.scores)
        assert result.prompt_tokens >= len(documents)
