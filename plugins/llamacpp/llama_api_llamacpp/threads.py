"""Compute threads chosen at run time, from the decode steps' own times (`threads = "auto"`).

llama.cpp's threads wait for each other at every step: when another process holds a core,
the thread that shares it makes all of them wait, and 2 threads on 2 cores fall from ~30 to
~2 tok/s while 1 thread holds ~22. So the count that is fastest depends on what else runs
now, and only the step times tell.

How it decides: it keeps the last step times at the current count, per batch shape (tokens
in the step: only steps of one shape compare). Now and then it tries one thread fewer or one
more (alternately, never past 1..max) for a few steps and keeps the count if those steps
are clearly faster than the recent ones at the current count; a candidate that loses is
tried again after twice as long (1 s up to 30 s), one that wins resets its wait. A run of
steps twice as slow as before it (another process took a core) tries one fewer at once,
however long the wait, and keeps it if it is a little faster; if not, the slower time is the
new usual one. Steps shorter than 2 ms are not worth tuning (tiny models): the count stays
as it started.

Only decode steps tune it. A prompt is read in chunks of hundreds of tokens whose time grows
with the context before them (each chunk attends to all of it): read as contention, that
growth made the tuner try one thread fewer again and again during a long prompt, at half
speed each time. Prompt chunks run with the count decode steps chose.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections import deque

log = logging.getLogger("llama_api_llamacpp")

MIN_STEP = 0.002  # seconds; shorter steps are left alone
PROBE_STEPS = 3  # steps a candidate count runs before it is judged (after one to settle)
WIN = 0.85  # a candidate's steps must take at most this share of the current count's
FORCED_WIN = 0.95  # the same, for the count tried after a slow run
SLOWDOWN = 2.0  # a step this many times its usual time means the load changed
SLOW_RUN = 3  # that many such steps in a row: try one thread fewer now
FIRST_WAIT = 1.0  # seconds before a candidate is tried (again, after a win)
MAX_WAIT = 30.0  # the longest wait, after repeated losses
# Steps of more tokens than this read a prompt (decode steps hold one token per stream, and
# a few drafted ones): not tuned.
MAX_TUNED_TOKENS = 64


def machine_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class ThreadTuner:
    """Feed it every step's time (`observe`); it calls `apply(n)` to change the count.

    Not thread-safe: it lives on the thread that decodes.
    """

    def __init__(self, start: int, max_threads: int, apply, name: str = "", auto: bool = True,
                 clock=time.monotonic):
        self.auto = auto  # False: a fixed count (`threads = N`), observe does nothing
        self.max_threads = max(1, max_threads) if auto else max(1, start)
        self.current = min(max(1, start), self.max_threads)
        # The cores the server lets this worker use now (set from another thread; read here
        # between steps): None = all of max_threads.
        self.budget: int | None = None
        self._apply = apply
        self._name = name
        self._clock = clock
        self._recent: dict[int, deque] = {}  # shape -> last step times at `current`
        self._usual: dict[int, float] = {}  # shape -> slow moving average at `current`
        self._slow_run = 0
        self._probe: int | None = None  # the count being tried
        self._probe_ratios: list[float] = []
        self._wait = {-1: FIRST_WAIT, +1: FIRST_WAIT}  # per direction: fewer, more
        self._next_try = {-1: clock() + FIRST_WAIT, +1: clock() + FIRST_WAIT}
        self._direction = -1  # tried first when both are due
        self.changes = 0
        self.tries: deque = deque(maxlen=32)  # (count tried, time ratio, kept): for the log

    @property
    def threads(self) -> int:
        """The count the next step runs with."""
        return self._probe if self._probe is not None else self.current

    @property
    def ceiling(self) -> int:
        """The most threads it may use now: its maximum, within the server's budget."""
        budget = self.budget
        return self.max_threads if budget is None else max(1, min(budget, self.max_threads))

    def observe(self, seconds: float, shape: int) -> None:
        """A step of `shape` tokens took `seconds` with `self.threads` threads."""
        if not self.auto:
            return
        if self.threads > self.ceiling:  # other workers got busy: give their cores back now
            self._probe = None
            self.current = self.ceiling
            self._recent.clear()
            self._usual.clear()
            self._apply(self.current)
            return
        if shape > MAX_TUNED_TOKENS:
            if self._probe is not None:  # a candidate is never left to read a prompt
                self._probe = None
                self._apply(self.current)
            return
        recent = self._recent.get(shape)
        if self._probe is not None:
            if self._probe_warming:  # the first step after a change settles the threads
                self._probe_warming = False
            elif recent:
                ratio = seconds / statistics.median(recent)
                self._probe_ratios.append(ratio)
                if ratio > SLOWDOWN or len(self._probe_ratios) >= PROBE_STEPS:
                    self._judge()
            return
        if recent is None:
            recent = self._recent[shape] = deque(maxlen=3)
        recent.append(seconds)
        usual = self._usual.setdefault(shape, seconds)
        if seconds > SLOWDOWN * usual:
            # Judged against the time before the run: `usual` moves only once it is over.
            self._slow_run += 1
        else:
            self._slow_run = 0
            self._usual[shape] = usual + 0.1 * (seconds - usual)
        if max(seconds, usual) < MIN_STEP or len(recent) < recent.maxlen:
            return
        if self._slow_run >= SLOW_RUN:
            self._slow_run = 0
            if self.current > 1:
                self._try(-1, forced=True)
                return
            self._usual[shape] = statistics.median(recent)  # one thread already: the new normal
        now = self._clock()
        for direction in (self._direction, -self._direction):
            if (1 <= self.current + direction <= self.ceiling
                    and now >= self._next_try[direction]):
                self._direction = -direction
                self._try(direction)
                break

    def _try(self, direction: int, forced: bool = False) -> None:
        self._probe = self.current + direction
        self._probe_direction = direction
        # After a slow run the current count is known to suffer: a count a little faster wins.
        self._probe_win = FORCED_WIN if forced else WIN
        self._probe_ratios = []
        self._probe_warming = True
        self._slow_run = 0
        self._apply(self._probe)

    def _judge(self) -> None:
        ratio = statistics.median(self._probe_ratios)
        direction, candidate = self._probe_direction, self._probe
        self._probe = None
        won = ratio <= self._probe_win
        self.tries.append((candidate, round(ratio, 2), won))
        if won:
            log.info("%s: %d compute threads instead of %d (steps took %.0f%% of the time)",
                     self._name, candidate, self.current, 100 * ratio)
            self.current = candidate
            self._apply(candidate)  # the same count: lets the owner see the change
            self.changes += 1
            self._recent.clear()
            self._usual.clear()
            self._wait = {-1: FIRST_WAIT, +1: FIRST_WAIT}
            self._direction = direction  # keep going while it pays
        else:
            self._apply(self.current)
            self._wait[direction] = min(MAX_WAIT, 2 * self._wait[direction])
            # The current count's recent steps are its time now (after a slow run, the new
            # normal): later slow runs are judged against it.
            self._usual.update({shape: statistics.median(times)
                                for shape, times in self._recent.items() if times})
        now = self._clock()
        self._next_try = {d: now + wait for d, wait in self._wait.items()}

