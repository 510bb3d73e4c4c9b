"""The driver thread and request routing, against a fake of the GPU library's dynamic generator.

`FakeDynamicGenerator` stands in for exllamav2's ExLlamaV2DynamicGenerator / exllamav3's
Generator: enqueue / iterate / cancel, jobs batched up to max_batch_size, result dicts shaped
like theirs (identifier, stage, eos, text, token_ids, eos_reason, new_tokens). No GPU.
"""

from __future__ import annotations

import threading
import time

import pytest

from llama_api import errors
from llama_api.contract.records import GenerateRequest, ResponseFormat
from llama_api_exllama.generation import ExllamaModel, Sampling
from llama_api_exllama.prompt import PromptBuilder


class FakeJob:
    def __init__(self, input_ids, max_new_tokens, sampling, stop_token_ids, identifier, pieces):
        self.input_ids = input_ids
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.stop_token_ids = stop_token_ids
        self.identifier = identifier
        self.pieces = list(pieces)
        self.new_tokens = 0


class FakeDynamicGenerator:
    """A fake of the GPU library's dynamic generator (not thread-safe on purpose: it checks)."""

    def __init__(self, max_batch_size=4, delay=0.0, eos_token=2):
        self.max_batch_size = max_batch_size
        self.delay = delay
        self.eos_token = eos_token
        self.pending: list[FakeJob] = []
        self.active: list[FakeJob] = []
        self.cancelled: list[FakeJob] = []
        self.max_active_seen = 0
        self.fail_next_iterate: Exception | None = None
        self.fail_job: FakeJob | None = None
        self.threads: set[str] = set()
        self._busy = threading.Lock()

    def _enter(self):
        assert self._busy.acquire(blocking=False), "generator used from two threads at once"
        self.threads.add(threading.current_thread().name)

    def enqueue(self, job):
        self._enter()
        try:
            if len(job.input_ids) > 1000:
                raise AssertionError("Job is too long for the cache")
            self.pending.append(job)
        finally:
            self._busy.release()

    def cancel(self, job):
        self._enter()
        try:
            if job in self.pending:
                self.pending.remove(job)
            elif job in self.active:
                self.active.remove(job)
            self.cancelled.append(job)
        finally:
            self._busy.release()

    def iterate(self):
        self._enter()
        try:
            if self.fail_next_iterate is not None:
                exc, self.fail_next_iterate = self.fail_next_iterate, None
                raise exc
            if self.delay:
                time.sleep(self.delay)
            results = []
            while self.pending and len(self.active) < self.max_batch_size:
                job = self.pending.pop(0)
                self.active.append(job)
                results.append(
                    {"job": job, "stage": "started", "identifier": job.identifier, "eos": False}
                )
            self.max_active_seen = max(self.max_active_seen, len(self.active))
            for job in list(self.active):
                if job is self.fail_job:
                    self.active.remove(job)
                    results.append(
                        {
                            "job": job,
                            "stage": "error",
                            "identifier": job.identifier,
                            "eos": True,
                            "error": RuntimeError("kernel fault"),
                        }
                    )
                    continue
                job.new_tokens += 1
                r = {"job": job, "stage": "streaming", "identifier": job.identifier, "eos": False}
                if not job.pieces:
                    r.update(eos=True, eos_reason="stop_token", new_tokens=job.new_tokens)
                else:
                    r.update(text=job.pieces.pop(0), token_ids=[[7]])
                    if job.new_tokens >= job.max_new_tokens:
                        r.update(eos=True, eos_reason="max_new_tokens", new_tokens=job.new_tokens)
                if r["eos"]:
                    self.active.remove(job)
                results.append(r)
            return results
        finally:
            self._busy.release()


class FakeAdapter:
    """What exl2.py / exl3.py provide, around the fake generator."""

    def __init__(self, generator, pieces):
        self.generator = generator
        self.pieces = pieces
        self.jobs: list[FakeJob] = []
        self.unloaded = False
        self.info = {"library": "fake"}

    def make_job(self, input_ids, max_new_tokens, sampling, stop_token_ids, identifier):
        job = FakeJob(input_ids, max_new_tokens, sampling, stop_token_ids, identifier, self.pieces)
        self.jobs.append(job)
        return job

    def unload(self):
        self.unloaded = True


@pytest.fixture
def make_model(model_writer):
    models = []

    def make(pieces=("Hello", " there", ",", " friend"), max_seq_len=64, **kwargs):
        folder = model_writer(f"m{len(models)}")
        adapter = FakeAdapter(FakeDynamicGenerator(**kwargs), pieces)
        model = ExllamaModel(
            adapter,
            PromptBuilder(folder),
            max_seq_len=max_seq_len,
            slots=adapter.generator.max_batch_size,
            backend="exllamav2",
        )
        models.append(model)
        return model

    yield make
    for model in models:
        model.unload()


def collect(stream):
    deltas = list(stream)
    return "".join(d.text for d in deltas), deltas[-1]


def test_completion_streams_text_and_exact_usage(make_model):
    model = make_model()
    text, last = collect(model.generate(GenerateRequest(prompt="the cat sat")))
    assert text == "Hello there, friend"
    assert last.finish_reason == "stop"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        4,
        5,
    )  # BOS + 3; 4 pieces + EOS
    job = model.adapter.jobs[0]
    assert job.input_ids[0] == model.prompt.tokenizer.token_to_id("<s>")
    assert job.stop_token_ids == [2]
    assert job.max_new_tokens == 60  # the rest of the context
    assert model.adapter.generator.threads == {"exllamav2-driver"}


def test_chat_uses_the_template(make_model):
    model = make_model()
    text, _ = collect(model.generate(GenerateRequest(messages=[{"role": "user", "content": "hi"}])))
    assert text == "Hello there, friend"
    ids = model.adapter.jobs[0].input_ids
    assert model.prompt.tokenizer.decode(ids, skip_special_tokens=False).startswith(
        "<|im_start|> user"
    )


def test_max_tokens_gives_length(make_model):
    model = make_model()
    text, last = collect(model.generate(GenerateRequest(prompt="hi", max_tokens=2)))
    assert text == "Hello there"
    assert last.finish_reason == "length"
    assert last.usage.completion_tokens == 2


def test_stop_string_is_never_emitted_and_cancels_the_job(make_model):
    model = make_model(
        pieces=["Hello", " th", "ere", " more"] + ["x"] * 10_000, max_seq_len=20_000, delay=0.001
    )
    text, last = collect(model.generate(GenerateRequest(prompt="hi", stop=["there"])))
    assert text == "Hello "
    assert last.finish_reason == "stop"
    assert last.usage.completion_tokens == 3
    deadline = time.time() + 2
    while not model.adapter.generator.cancelled and time.time() < deadline:
        time.sleep(0.01)
    assert model.adapter.generator.cancelled == model.adapter.jobs


def test_concurrent_requests_are_batched_by_one_driver(make_model):
    # 0.4 s a job: the six threads have started long before the first four finish.
    model = make_model(pieces=[f" w{i}" for i in range(20)], max_batch_size=4, delay=0.02)
    results = {}

    def run(i):
        results[i] = collect(model.generate(GenerateRequest(prompt="hi", max_tokens=20)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 6
    assert all(text == "".join(f" w{i}" for i in range(20)) for text, _ in results.values())
    assert all(last.usage.completion_tokens == 20 for _, last in results.values())
    assert model.adapter.generator.max_active_seen == 4  # batched up to max_batch_size
    assert model.adapter.generator.threads == {"exllamav2-driver"}
    assert model.engine.active == 0


def test_cancel_between_tokens(make_model):
    model = make_model(pieces=["x"] * 10_000, delay=0.001)
    cancelled = threading.Event()
    stream = model.generate(GenerateRequest(prompt="hi"), cancelled)
    for received, _ in enumerate(stream, start=1):
        if received == 5:
            cancelled.set()
            break
    stream.close()
    deadline = time.time() + 2
    while model.engine.active and time.time() < deadline:
        time.sleep(0.01)
    assert model.engine.active == 0
    assert model.adapter.generator.active == []
    assert model.adapter.generator.cancelled == model.adapter.jobs


def test_cancelled_event_alone_stops_a_waiting_request(make_model):
    model = make_model(pieces=["x"] * 10_000, delay=0.001)
    cancelled = threading.Event()
    stream = model.generate(GenerateRequest(prompt="hi"), cancelled)
    next(stream)
    cancelled.set()  # the worker sets this; the driver drops the job and the stream ends
    rest = list(stream)
    assert all(d.finish_reason is None for d in rest)
    assert model.adapter.generator.cancelled == model.adapter.jobs


def test_generator_failure_reaches_every_request_and_the_driver_survives(make_model):
    model = make_model(pieces=["x"] * 10_000, delay=0.001)
    stream = model.generate(GenerateRequest(prompt="hi"))
    next(stream)
    model.adapter.generator.fail_next_iterate = RuntimeError("CUDA error: illegal memory access")
    with pytest.raises(errors.LlamaApiError, match="illegal memory access") as info:
        list(stream)
    assert info.value.status == 500
    model.adapter.pieces = ["ok"]
    assert collect(model.generate(GenerateRequest(prompt="hi")))[0] == "ok"


def test_job_error_stage_and_enqueue_rejection(make_model):
    model = make_model(pieces=["x"] * 100)
    stream = model.generate(GenerateRequest(prompt="hi"))
    model.adapter.generator.fail_job = model.adapter.jobs[0]
    with pytest.raises(errors.LlamaApiError, match="kernel fault") as info:
        list(stream)
    assert info.value.status == 500
    long_model = make_model(max_seq_len=5000)
    with pytest.raises(errors.BadRequest, match="too long for the cache"):
        list(long_model.generate(GenerateRequest(prompt=[5] * 1500)))


def test_request_checks_before_streaming(make_model):
    model = make_model(max_seq_len=8)
    with pytest.raises(errors.ContextLengthExceeded):
        model.generate(GenerateRequest(prompt=[5] * 8))
    with pytest.raises(errors.NotSupported, match="tools"):
        model.generate(
            GenerateRequest(
                messages=[{"role": "user", "content": "hi"}],
                tools=[{"type": "function", "function": {"name": "get_time"}}],
            )
        )
    with pytest.raises(errors.NotSupported, match="logprobs"):
        model.generate(GenerateRequest(prompt="hi", logprobs=2))
    with pytest.raises(errors.NotSupported, match="json_object"):
        model.generate(
            GenerateRequest(prompt="hi", response_format=ResponseFormat(type="json_object"))
        )
    # Sampling ranges (temperature, top_p, max_tokens, ...) are the core's to check
    # (tests/test_errors.py); the vocabulary is the model's.
    vocab = model.prompt.vocab_size
    with pytest.raises(errors.BadRequest, match="logit_bias token") as info:
        model.generate(GenerateRequest(prompt="hi", logit_bias={vocab: 5.0}))
    assert info.value.param == "logit_bias"
    with pytest.raises(errors.BadRequest, match="out of range") as info:
        model.generate(GenerateRequest(prompt=[5, vocab]))
    assert info.value.param == "prompt"
    assert model.adapter.jobs == []


def test_tools_with_tool_choice_none_are_left_out(make_model):
    model = make_model()
    tools = [{"type": "function", "function": {"name": "get_time"}}]
    request = GenerateRequest(
        messages=[{"role": "user", "content": "hi"}], tools=tools, tool_choice="none"
    )
    text, _ = collect(model.generate(request))
    assert text == "Hello there, friend"
    with pytest.raises(errors.NotSupported, match="tools"):
        model.generate(
            GenerateRequest(messages=[{"role": "user", "content": "hi"}], tools=tools,
                            tool_choice="function", tool_name="get_time")
        )


def test_sampling_parameters_reach_the_job(make_model):
    model = make_model()
    request = GenerateRequest(
        prompt="hi",
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        repeat_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        seed=42,
        logit_bias={7: -100.0},
    )
    collect(model.generate(request))
    assert model.adapter.jobs[0].sampling == Sampling(
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        repetition_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        seed=42,
        logit_bias={7: -100.0},
    )
    collect(model.generate(GenerateRequest(prompt="hi", temperature=0)))
    assert model.adapter.jobs[1].sampling.greedy


def test_unload_ends_waiting_requests_and_refuses_new_ones(make_model):
    model = make_model(pieces=["x"] * 10_000, delay=0.001)
    stream = model.generate(GenerateRequest(prompt="hi"))
    next(stream)
    model.unload()
    assert model.adapter.unloaded
    with pytest.raises(errors.BackendUnavailable):
        list(stream)
    with pytest.raises(errors.BackendUnavailable):
        model.generate(GenerateRequest(prompt="hi"))


def test_generate_hook_streams_and_embeddings_are_left_to_the_core(make_model):
    """The hooks take the model as given (the worker hosts this plugin alone); there is no
    embed hook, so the core refuses embeddings for exllama models with NotSupported."""
    import llama_api_exllama as plugin

    model = make_model()
    text, _ = collect(
        plugin.generate(
            model=model, request=GenerateRequest(prompt="x"), cancelled=threading.Event()
        )
    )
    assert text == "Hello there, friend"
    assert not hasattr(plugin, "embed")
    plugin.unload_model(model=model)
