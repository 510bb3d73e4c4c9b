"""Batching across requests: one compute thread, fed by the request threads.

The worker calls the `embed` hook from up to `slots` threads at once. Each call checks
its input in its own thread, then hands its rows to the model's single compute thread
and waits. Calls that arrive while a batch runs queue up and join the next batch,
up to `max_batch` rows. The compute thread waits (at most `max_wait` seconds) only when
callers have announced themselves and are still preparing their rows: a lone request
never waits, so its latency is that of an unbatched call.

A request with more rows than a batch holds runs a batch-sized slice at a time and goes
back in line after each slice, so one large request can't hold up small ones for long.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)


class Job:
    """One request's rows; filled slice by slice by the compute thread."""

    __slots__ = (
        "batch_requests",
        "batch_size",
        "done",
        "error",
        "filled",
        "parts",
        "result",
        "rows",
        "taken",
    )

    def __init__(self, rows: Sequence[Any]):
        self.rows = rows
        self.taken = 0  # rows handed to a batch so far
        self.parts: list[tuple[int, Any]] = []  # (first row, results for a slice)
        self.filled = 0  # rows computed so far
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None
        # The largest batch (rows, requests) that served part of this job.
        self.batch_size = 0
        self.batch_requests = 0

    def finish(self) -> None:
        self.parts.sort(key=lambda part: part[0])
        if len(self.parts) == 1:
            self.result = self.parts[0][1]
        else:
            self.result = join([part for _, part in self.parts])
        self.parts = []
        self.done.set()


def cut(result, start: int, end: int):
    """Rows start:end of an array, or of each array in a tuple."""
    if isinstance(result, tuple):
        return tuple(part[start:end] for part in result)
    return result[start:end]


def join(parts: list):
    import numpy as np

    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(column) for column in zip(*parts))
    return np.concatenate(parts)


class BatchStats:
    """Counters for `info`, tests and the benchmark: how many batches ran, how big."""

    def __init__(self):
        self.batches = 0
        self.rows = 0
        self.largest = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "batches": self.batches,
            "rows": self.rows,
            "largest_batch": self.largest,
            "mean_batch": round(self.rows / self.batches, 2) if self.batches else 0.0,
        }


class Batcher:
    """Runs `compute(rows) -> 2-D array (one row per input row)` on batches of jobs.

    `compute` may also return a tuple of arrays; each caller then gets its rows of each.
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
        """Queue rows, wait until all are computed, return (their results, the job)."""
        job = Job(rows)
        with self._cond:
            if announced:
                self._arriving -= 1
            if self._stopping:
                raise RuntimeError("the model is unloading")
            if not rows:
                job.done.set()
                return job.result, job
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

    def _take_batch(self) -> list[tuple[Job, int, int]] | None:
        """Slices (job, start, end) of queued jobs, at most max_batch rows in all."""
        with self._cond:
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if not self._jobs:
                return None
            batch: list[tuple[Job, int, int]] = []
            in_batch: set[int] = set()
            size = 0
            deadline = None
            while size < self.max_batch:
                if self._jobs and id(self._jobs[0]) not in in_batch:
                    job = self._jobs.popleft()
                    start = job.taken
                    end = min(len(job.rows), start + self.max_batch - size)
                    job.taken = end
                    batch.append((job, start, end))
                    in_batch.add(id(job))
                    size += end - start
                    if end < len(job.rows):
                        self._jobs.append(job)  # the rest waits its turn behind the others
                    continue
                if self._jobs or self._arriving <= 0 or self.max_wait <= 0 or self._stopping:
                    break
                # Someone is still preparing their rows: give them a moment to join.
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
            for job, start, end in batch:
                rows.extend(job.rows[start:end])
            try:
                result = self.compute(rows)
                error = None
            except BaseException as exc:  # noqa: BLE001 - every caller in the batch gets it
                result = None
                error = exc
            self.stats.batches += 1
            self.stats.rows += len(rows)
            self.stats.largest = max(self.stats.largest, len(rows))
            offset = 0
            for job, start, end in batch:
                job.batch_size = max(job.batch_size, len(rows))
                job.batch_requests = max(job.batch_requests, len(batch))
                if job.error is not None:
                    pass  # an earlier slice failed: the caller already has its error
                elif error is not None:
                    job.error = error
                    with self._cond:
                        if job in self._jobs:
                            self._jobs.remove(job)
                    job.done.set()
                else:
                    job.parts.append((start, cut(result, offset, offset + end - start)))
                    job.filled += end - start
                    if job.filled == len(job.rows):
                        job.finish()
                offset += end - start
