"""Batching across requests: one compute thread, fed by the request threads.

The worker calls the `embed` hook from up to `slots` threads at once. Each call checks
its input in its own thread, then hands its rows to the model's single compute thread
and waits. Calls that arrive while a batch runs queue up and join the next batch,
up to `max_batch` rows. The compute thread waits (at most `max_wait` seconds) only when
callers have announced themselves and are still preparing their rows: a lone request
never waits, so its latency is that of an unbatched call.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


class Job:
    __slots__ = ("rows", "done", "result", "error", "batch_size", "batch_requests")

    def __init__(self, rows: Sequence[Any]):
        self.rows = rows
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None
        self.batch_size = 0
        self.batch_requests = 0


class BatchStats:
    """Counters for `info` and tests: how many batches ran and how big they were."""

    def __init__(self):
        self.batches = 0
        self.rows = 0
        self.requests = 0
        self.largest = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "batches": self.batches,
            "rows": self.rows,
            "requests": self.requests,
            "largest_batch": self.largest,
            "mean_batch": round(self.rows / self.batches, 2) if self.batches else 0.0,
        }


class Batcher:
    """Runs `compute(rows) -> 2-D array (one row per input row)` on batches of jobs.

    `compute` may also return a tuple of arrays; each caller then gets its slice of each.

    `setup()` runs first on the compute thread (per-thread library settings).
    """

    def __init__(
        self,
        compute: Callable[[list[Any]], Any],
        *,
        max_batch: int = 64,
        max_wait: float = 0.005,
        setup: Callable[[], None] | None = None,
        name: str = "embed-batcher",
    ):
        self.compute = compute
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait))
        self.setup = setup
        self.stats = BatchStats()
        self._jobs: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._arriving = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # Request threads -------------------------------------------------------------

    def announce(self) -> None:
        """A request is on its way (preparing its rows): a batch may wait for it."""
        with self._cond:
            self._arriving += 1

    def withdraw(self) -> None:
        """An announced request failed before submitting."""
        with self._cond:
            self._arriving -= 1
            self._cond.notify_all()

    def run(self, rows: Sequence[Any], *, announced: bool = False) -> tuple[Any, Job]:
        """Queue rows, wait for their batch, return (their result rows, the job)."""
        job = Job(rows)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the model is unloading")
            if announced:
                self._arriving -= 1
            self._jobs.append(job)
            self._cond.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result, job

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # Compute thread --------------------------------------------------------------

    def _take_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if not self._jobs:
                return None
            batch = [self._jobs.popleft()]
            size = len(batch[0].rows)
            deadline = None
            while size < self.max_batch:
                if self._jobs:
                    if size + len(self._jobs[0].rows) > self.max_batch:
                        break
                    job = self._jobs.popleft()
                    batch.append(job)
                    size += len(job.rows)
                    continue
                if self._arriving <= 0 or self.max_wait <= 0 or self._stopping:
                    break
                # Someone is still tokenizing: give them a moment to join.
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.max_wait
                if now >= deadline:
                    break
                self._cond.wait(deadline - now)
            return batch

    def _loop(self) -> None:
        if self.setup is not None:
            try:
                self.setup()
            except Exception:
                log.exception("batcher setup failed")
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            rows: list[Any] = []
            for job in batch:
                rows.extend(job.rows)
            try:
                matrix = self.compute(rows)
                error = None
            except BaseException as exc:  # every caller of the batch gets the error
                matrix = None
                error = exc
            self.stats.batches += 1
            self.stats.rows += len(rows)
            self.stats.requests += len(batch)
            self.stats.largest = max(self.stats.largest, len(rows))
            start = 0
            for job in batch:
                end = start + len(job.rows)
                if error is None:  # an array, or a tuple of arrays (one row per input row)
                    if isinstance(matrix, tuple):
                        job.result = tuple(part[start:end] for part in matrix)
                    else:
                        job.result = matrix[start:end]
                else:
                    job.error = error
                job.batch_size = len(rows)
                job.batch_requests = len(batch)
                start = end
                job.done.set()
