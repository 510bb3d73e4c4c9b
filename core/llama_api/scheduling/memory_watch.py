"""A worker can't take the machine: the server kills one whose memory grows past what the
host memory limit (`--max-memory`, else 90% of the machine) leaves it beside the other
workers, before the kernel's OOM killer has to pick a process, which could be any.

The scheduler's estimate decides whether a model may load; this watches what the workers
really hold while they serve (a request can make one grow: a runaway grammar, a huge batch).
Checked every `CHECK_EVERY` seconds: a worker growing by a GiB a second overshoots by at
most a quarter of one. The killed worker's requests get 503 `worker_out_of_memory`, the
`memory_exceeded` event is published, and the scheduler's crash path frees the model; the
other workers are untouched.
"""

from __future__ import annotations

import anyio

from llama_api.scheduling import memory

CHECK_EVERY = 0.25  # seconds


async def watch_memory(scheduler) -> None:
    """Run until cancelled (in the scheduler's task group); nothing to do without a limit.
    When the loaded workers together hold more than the limit, the one that grew most since
    it was first seen loaded is the one to go."""
    limit = scheduler.memory.limits.host
    if not limit:
        return
    first_seen: dict[int, int] = {}  # pid -> its size when first seen loaded
    while True:
        await anyio.sleep(CHECK_EVERY)
        workers = [entry.handle for entry in (*scheduler.entries.values(),
                                              *scheduler.unloading.values())
                   if entry.measurable and entry.handle.alive]
        if not workers:
            first_seen = {}
            continue
        sizes = await anyio.to_thread.run_sync(resident_sizes, workers)  # reads /proc
        first_seen = {worker.pid: first_seen.get(worker.pid, size)
                      for worker, size in zip(workers, sizes)}
        total = sum(sizes)
        if total > limit:
            size, worker = max(zip(sizes, workers),
                               key=lambda pair: pair[0] - first_seen[pair[1].pid])
            if worker.alive:
                kill(scheduler, worker, size, limit - (total - size), limit)


def resident_sizes(workers) -> list[int]:
    return [memory.rss(worker.pid) or 0 for worker in workers]


def kill(scheduler, worker, size: int, allowed: int, limit: int) -> None:
    message = (f"the worker for model {worker.spec.id!r} (pid {worker.pid}) grew to "
               f"{memory.format_size(size)} while serving, past the "
               f"{memory.format_size(max(allowed, 0))} that the memory limit "
               f"({memory.format_size(limit)}, --max-memory) leaves it beside the other "
               "workers, and was killed")
    scheduler.events.publish("memory_exceeded", worker.spec.id, pid=worker.pid, rss=size,
                             allowed=max(allowed, 0), limit=limit)
    worker.kill(message, "worker_out_of_memory")
