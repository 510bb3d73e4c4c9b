"""What the server measures, and the one log line per request.

- `Metrics`: the Prometheus instruments in a registry of this app's own (tests build several
  apps in one process), fed by three sources: each request's `RequestRecord` once it is
  answered (requests, durations, tokens, time to first token, tokens/s), the scheduler's
  `on_queue_wait` hook (queue wait) and the lifecycle events (loads, unloads, evictions,
  crashes). Gauges that describe the present (running and waiting requests, worker memory)
  are read at scrape time.
- `request_middleware`: opens each request's record, times the request, counts it and logs
  one line for it. The routes fill the record in (`request_record`): the model once found,
  and the deltas and results as they handle them (`routes.generation`, `routes.embeddings`).

Labels stay low-cardinality: `route` is the route's template, `model` a registry id (set by
the routes once the registry has found the model, never the client's string).
"""

from __future__ import annotations

import logging
import time

from litestar.connection import ASGIConnection
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest

from llama_api.api.activity import RecentRequests
from llama_api.contract.records import Delta
from llama_api.scheduling import memory
from llama_api.scheduling.events import Event

log = logging.getLogger("llama_api.requests")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Routes polled by probes and scrapers: their lines go to DEBUG, not to every INFO log.
QUIET_ROUTES = {"/health", "/ready", "/metrics"}

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class RequestRecord:
    """What one HTTP request did; the middleware opens it, the routes fill it."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.model = ""
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.first_token: float | None = None  # seconds from the start
        self.last_token: float | None = None

    def delta(self, delta: Delta) -> None:
        """Count one delta as it comes from the worker (its arrival times the tokens)."""
        if delta.text or delta.reasoning or delta.tool_calls:
            now = time.perf_counter() - self.started
            if self.first_token is None:
                self.first_token = now
            self.last_token = now
        if delta.usage is not None:  # one per generation: the last delta's
            self.prompt_tokens += delta.usage.prompt_tokens
            self.completion_tokens += delta.usage.completion_tokens

    def tokens_per_second(self) -> float | None:
        """Generation speed after the first token (None for one token or none)."""
        if self.first_token is None or self.completion_tokens < 2:
            return None
        span = self.last_token - self.first_token
        return (self.completion_tokens - 1) / span if span > 0 else None


# Where the middleware keeps a request's record in its scope's state.
_RECORD = "llama_api.request_record"


def request_record(connection: ASGIConnection) -> RequestRecord:
    """The record `request_middleware` opened for this request, for the route to fill in."""
    return connection.state[_RECORD]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.scheduler = None  # set when the app starts; read at scrape time
        self.recent = RecentRequests()  # GET /admin/requests
        r = self.registry
        self.requests = Counter("llama_api_requests", "HTTP requests answered",
                                ["method", "route", "model", "status"], registry=r)
        self.duration = Histogram("llama_api_request_duration_seconds",
                                  "Time from request to the end of the answer",
                                  ["route", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("llama_api_queue_wait_seconds",
                                    "Time a request waited for a worker or a slot (not loads)",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("llama_api_time_to_first_token_seconds",
                                     "Time from request to the first generated token",
                                     ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("llama_api_prompt_tokens", "Prompt tokens read",
                                     ["model"], registry=r)
        self.generated_tokens = Counter("llama_api_generated_tokens", "Tokens generated",
                                        ["model"], registry=r)
        self.tokens_per_second = Histogram("llama_api_generation_tokens_per_second",
                                           "Generation speed of a request after its first token",
                                           ["model"], buckets=RATE_BUCKETS, registry=r)
        self.loads = Counter("llama_api_model_loads", "Model loads, by result",
                             ["model", "result"], registry=r)
        self.load_seconds = Histogram("llama_api_model_load_seconds", "Time a model took to load",
                                      ["model"], buckets=LOAD_BUCKETS, registry=r)
        self.unloads = Counter("llama_api_model_unloads",
                               "Models unloaded, by reason (request, idle, evicted, shutdown)",
                               ["model", "reason"], registry=r)
        self.evictions = Counter("llama_api_model_evictions",
                                 "Models unloaded to make room for another", ["model"], registry=r)
        self.crashes = Counter("llama_api_worker_crashes", "Workers that died while loaded",
                               ["model"], registry=r)
        r.register(_SchedulerGauges(self))

    # -- sources ---------------------------------------------------------------------

    def on_queue_wait(self, model_id: str, seconds: float) -> None:
        """The scheduler's hook: a lease got its slot after queueing `seconds`."""
        self.queue_wait.labels(model_id).observe(seconds)

    def on_event(self, event: Event) -> None:
        match event.kind:
            case "loaded":
                self.loads.labels(event.model, "ok").inc()
                self.load_seconds.labels(event.model).observe(event.fields["seconds"])
            case "load_failed":
                self.loads.labels(event.model, "failed").inc()
            case "unloaded":
                self.unloads.labels(event.model, event.fields["reason"]).inc()
                if event.fields["reason"] == "evicted":
                    self.evictions.labels(event.model).inc()
            case "crashed":
                self.crashes.labels(event.model).inc()

    def on_request(self, method: str, route: str, status: int, record: RequestRecord,
                   seconds: float) -> None:
        model = record.model
        self.recent.add(method, route, status, model, record.prompt_tokens,
                        record.completion_tokens, record.first_token, seconds)
        self.requests.labels(method, route, model, str(status)).inc()
        self.duration.labels(route, model).observe(seconds)
        if not model:
            return
        if record.prompt_tokens:
            self.prompt_tokens.labels(model).inc(record.prompt_tokens)
        if record.completion_tokens:
            self.generated_tokens.labels(model).inc(record.completion_tokens)
        if record.first_token is not None:
            self.first_token.labels(model).observe(record.first_token)
        rate = record.tokens_per_second()
        if rate is not None:
            self.tokens_per_second.labels(model).observe(rate)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _SchedulerGauges:
    """Gauges read from the scheduler when scraped: requests running and waiting, memory."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        return []  # known only at scrape time

    def collect(self):
        running = GaugeMetricFamily("llama_api_requests_running",
                                    "Requests holding a slot of the model", labels=["model"])
        waiting = GaugeMetricFamily("llama_api_requests_waiting",
                                    "Requests queued for a slot of the model", labels=["model"])
        loaded = GaugeMetricFamily("llama_api_model_loaded",
                                   "1 for each model loaded now", labels=["model"])
        pinned = GaugeMetricFamily("llama_api_model_pinned",
                                   "1 for each pinned model", labels=["model"])
        rss = GaugeMetricFamily("llama_api_worker_rss_bytes",
                                "Resident memory of the model's worker and its children",
                                labels=["model"])
        node = GaugeMetricFamily("llama_api_model_node",
                                 "1 for each loaded model, labelled with the node its worker "
                                 "runs on (local, or a Ray node)", labels=["model", "node"])
        threads = GaugeMetricFamily("llama_api_worker_threads",
                                    "Compute threads the model's worker runs with now "
                                    "(backends that choose them at run time)", labels=["model"])
        scheduler = self.metrics.scheduler
        if scheduler is not None:
            for model_id, entry in scheduler.loaded().items():
                running.add_metric([model_id], entry.in_use)
                waiting.add_metric([model_id], entry.queued)
                loaded.add_metric([model_id], 1)
                node.add_metric([model_id, entry.node.label or "local"], 1)
                held = memory.rss(entry.handle.pid) if entry.measurable else None
                if held is not None:
                    rss.add_metric([model_id], held)
                now = entry.handle.info.get("n_threads")
                if isinstance(now, int):
                    threads.add_metric([model_id], now)
            for model_id in sorted(scheduler.pinned):
                pinned.add_metric([model_id], 1)
        return [running, waiting, loaded, pinned, node, rss, threads]


def request_middleware(app, metrics: Metrics):
    """ASGI middleware (inside routing, so the route template is known): open each request's
    record, time the request, count it in `metrics`, and log one line for it. The line
    never holds headers."""

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        record = RequestRecord()
        scope.setdefault("state", {})[_RECORD] = record  # for `request_record`
        status = 500  # unless a response starts

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_and_note_status)
        finally:
            seconds = time.perf_counter() - record.started
            route = scope.get("path_template") or "unmatched"
            metrics.on_request(scope["method"], route, status, record, seconds)
            log_request(scope["method"], route, status, record, seconds)

    return middleware


def log_request(method: str, route: str, status: int, record: RequestRecord,
                seconds: float) -> None:
    ttft = "-" if record.first_token is None else f"{record.first_token:.3f}s"
    log.log(logging.DEBUG if route in QUIET_ROUTES else logging.INFO,
            "%s %s %s model=%s prompt_tokens=%d completion_tokens=%d ttft=%s total=%.3fs",
            method, route, status, record.model or "-", record.prompt_tokens,
            record.completion_tokens, ttft, seconds,
            extra={"request": {"method": method, "route": route, "status": status,
                               "model": record.model or None,
                               "prompt_tokens": record.prompt_tokens,
                               "completion_tokens": record.completion_tokens,
                               "ttft": record.first_token, "seconds": round(seconds, 4)}})
