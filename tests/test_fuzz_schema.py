"""Fuzzing every route the server's own OpenAPI schema lists (schemathesis) over the echo
models: positive and negative data, a fixed seed, a small example budget per route and mode
(LLAMA_API_FUZZ_EXAMPLES raises it). A real server, not the in-process test client: that
client buffers a whole answer, and some routes stream without end (/admin/events), so here
a stream is read for at most `STREAM_READ_S` seconds.

Every answer must be: no 5xx; a status code the schema documents for the route; negative
data refused with a 4xx; an error body in the route's API shape (OpenAI's `{"error": {...}}`,
Anthropic's `{"type": "error", "error": {...}}` on /v1/messages). The routes come from /schema/openapi.json when the test runs, never a list.
"""

from __future__ import annotations

import datetime
import os
import time

import httpx
import pytest
from support import echo_server

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import negative_data_rejection

EXAMPLES = int(os.environ.get("LLAMA_API_FUZZ_EXAMPLES", "10"))
SEED = int(os.environ.get("LLAMA_API_FUZZ_SEED", "20261201"))

# Models the fuzzer may name instead of a random string, so that good bodies reach a backend.
# Not "broken": its 503 is by design (test_faults.py checks it).
# A context bounds max_tokens, as a real model's does: without one, a fuzzed max_tokens of
# 10^18 would generate for ever.
FUZZ_MODELS = {"fast": {"context": 1000}, "wide": {"slots": 2, "context": 1000},
               "broken": {"fail_load": "weights are corrupt"}}
ECHO_MODELS = ["fast", "wide"]


def is_anthropic(path: str) -> bool:
    return path.startswith("/v1/messages")


def error_shape_problem(path: str, response) -> str | None:
    """Why this error body isn't in the route's API shape (None when it is)."""
    try:
        body = response.json()
    except ValueError:
        return f"error body is not JSON: {response.text[:200]!r}"
    if is_anthropic(path):
        ok = (isinstance(body, dict) and body.get("type") == "error"
              and isinstance(body.get("error"), dict)
              and isinstance(body["error"].get("type"), str)
              and isinstance(body["error"].get("message"), str))
        return None if ok else f"not an Anthropic error body: {body!r:.300}"
    error = body.get("error") if isinstance(body, dict) else None
    ok = (isinstance(error, dict) and isinstance(error.get("message"), str)
          and isinstance(error.get("type"), str) and set(error) >= {"param", "code"})
    return None if ok else f"not an OpenAI error body: {body!r:.300}"


def documented_codes(operation) -> set[int]:
    return {int(code) for code in operation.definition.raw.get("responses", {})
            if code.isdigit()}


STREAM_READ_S = 0.5
STREAM_READ_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    with echo_server(folder / "models", "--max-workers", "2", models=FUZZ_MODELS,
                     events=folder / "events.jsonl") as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def schema(fuzz_server):
    raw = fuzz_server.get("/schema/openapi.json").json()
    return schemathesis.openapi.from_dict(raw)


def send(client: httpx.Client, arguments: dict) -> httpx.Response:
    """The answer, with at most STREAM_READ_BYTES of its body or STREAM_READ_S of its stream.

    /admin/events streams and waits for events: 1 s without a byte ends its read. Any other
    route answers, after loading a model perhaps: it gets 30 s."""
    started = time.monotonic()
    waits_for_events = arguments["method"].upper() == "GET" and \
        "/admin/events" in arguments["url"]
    read_timeout = 1.0 if waits_for_events else 30.0
    timeout = httpx.Timeout(30.0, read=read_timeout)
    with client.stream(**arguments, timeout=timeout) as response:
        body, deadline = b"", started + STREAM_READ_S
        try:
            for piece in response.iter_bytes():
                body += piece
                if len(body) >= STREAM_READ_BYTES or time.monotonic() > deadline:
                    break
        except httpx.ReadTimeout:  # a stream that waits for more: we have its start
            pass
        answer = httpx.Response(response.status_code, headers=response.headers, content=body,
                                request=response.request)
        answer.elapsed = datetime.timedelta(seconds=time.monotonic() - started)
        return answer


def operations(schema):
    return [result.ok() for result in schema.get_all_operations()]


class Tally:
    def __init__(self):
        self.cases = self.errors = self.server_errors = self.lost = 0
        self.failures: list[str] = []
        self.skipped: list[str] = []
        self.seconds: dict[str, float] = {}

    def fail(self, label: str, case, why: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(f"{label}: {why}\n    body={case.body!r:.400}"
                                 f" path={case.path_parameters!r} query={case.query!r}")


def fuzz_operation(client, operation, mode: GenerationMode, tally: Tally) -> None:
    label = f"{operation.method.upper()} {operation.path} [{mode.value}]"
    path = operation.path
    allowed = documented_codes(operation)

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(case=operation.as_strategy(generation_mode=mode),
           echo=st.sampled_from([None, *ECHO_MODELS]))
    def run(case, echo):
        if echo and mode is GenerationMode.POSITIVE:
            # A known model lets a good body reach a backend instead of stopping at 404.
            if isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = echo
            if "model_id" in (case.path_parameters or {}):
                case.path_parameters["model_id"] = echo
        kwargs = case.as_transport_kwargs(base_url=str(client.base_url).rstrip("/"))
        kwargs.pop("cookies", None)
        tally.cases += 1
        try:
            response = send(client, _httpx_arguments(kwargs))
        except httpx.HTTPError as exc:  # the request never got an answer
            tally.lost += 1
            tally.fail(label, case, f"no answer: {type(exc).__name__}: {exc}")
            return
        status = response.status_code
        if status >= 400:
            tally.errors += 1
        if status >= 500:
            tally.server_errors += 1
            tally.fail(label, case, f"{status} {response.text[:300]}")
        if status not in allowed:
            tally.fail(label, case, f"undocumented status {status}: {response.text[:200]}")
        if status >= 400 and status != 499:
            problem = error_shape_problem(path, response)
            if problem:
                tally.fail(label, case, problem)
        try:
            case.validate_response(response, checks=[not_a_server_error, negative_data_rejection])
        except FailureGroup as failure:  # schemathesis' own verdict
            tally.fail(label, case, " ".join(str(failure).split())[:300])

    began = time.perf_counter()
    try:
        run()
    except Unsatisfiable:  # nothing to negate: a route without parameters or body
        tally.skipped.append(label)
    tally.seconds[label] = time.perf_counter() - began


def _httpx_arguments(kwargs: dict) -> dict:
    """schemathesis' `requests`-style keyword arguments, as httpx takes them."""
    arguments = {"method": kwargs["method"], "url": kwargs["url"],
                 "headers": kwargs.get("headers"), "params": kwargs.get("params")}
    if "json" in kwargs:
        arguments["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        arguments["content"] = kwargs["data"]
    return arguments


@pytest.mark.timeout(300)
def test_every_route_survives_fuzzing(fuzz_server, schema):
    started = time.perf_counter()
    tally = Tally()
    listed = operations(schema)
    assert listed, "the schema lists no routes"
    for operation in listed:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(fuzz_server, operation, mode, tally)
    slowest = sorted(tally.seconds.items(), key=lambda item: -item[1])[:3]
    print("\nslowest:", ", ".join(f"{label} {seconds:.1f}s" for label, seconds in slowest))
    print(f"\nFUZZ: {len(listed)} routes, {tally.cases} cases, {tally.errors} errors (4xx/5xx), "
          f"{tally.server_errors} 5xx, {tally.lost} lost, "
          f"{time.perf_counter() - started:.1f}s (budget {EXAMPLES} per route and mode; "
          f"nothing to negate: {', '.join(tally.skipped) or 'none'})")
    if tally.server_errors:
        log = fuzz_server.server_log()
        tally.failures.append("server log:\n" + log[log.find("Traceback"):][-3000:])
    assert not tally.failures, "\n".join(tally.failures)
    # The server still answers a good request after all that.
    ok = fuzz_server.post("/v1/chat/completions", json={
        "model": "fast", "messages": [{"role": "user", "content": "still here"}], "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "still here"


def test_schema_documents_error_codes(schema):
    """A route that runs a model (its body names one) documents an unknown model, a full
    queue and a failed load; one that only looks a model up (`{model_id}`) the unknown one."""
    missing = {}
    for operation in operations(schema):
        body = operation.definition.raw.get("requestBody")
        needed = {404, 429, 503} if body else {404} if "{model_id" in operation.path else set()
        if needed:
            lacking = needed - documented_codes(operation)
            if lacking:
                missing[f"{operation.method.upper()} {operation.path}"] = sorted(lacking)
    assert not missing, missing


def test_schema_states_the_bounds_the_server_checks(schema):
    """What the fuzzer generates from: bounds of 0, bounds in unions and maps are there."""
    parts = schema.raw_schema["components"]["schemas"]
    chat = parts["ChatCompletionRequest"]["properties"]
    assert chat["temperature"]["minimum"] == 0 and chat["top_k"]["minimum"] == 0
    assert chat["top_p"]["minimum"] == 0 and chat["top_p"]["maximum"] == 1
    assert chat["repeat_penalty"]["exclusiveMinimum"] == 0
    assert chat["stop"]["maxItems"] == 16
    assert chat["logit_bias"]["propertyNames"] == {"pattern": "^[0-9]+$"}
    assert chat["logit_bias"]["additionalProperties"]["maximum"] == 100
    embedding_input = parts["EmbeddingRequest"]["properties"]["input"]
    assert embedding_input["minItems"] == 1 and embedding_input["maxItems"] == 2048
