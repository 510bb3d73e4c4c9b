"""How much memory the machine has, what a model will take, and what a worker takes.

- Limits: `--max-memory` / `--max-gpu-memory`, else 90% of what is detected (host RAM, or
  a container's cgroup limit when lower; the VRAM of every NVIDIA GPU, summed). Unknown
  (no GPU, no /proc) means unlimited.
- A model's need before it loads: the bare worker process plus what its plugin's
  `estimate_memory(spec, gpu)` hook says (weights, caches, the backend's libraries), kept
  until the model's spec or its file's modification time changes.
- After it loads, what its worker measures (resident set now, GPU memory of its pid)
  stands in for the estimate.

The GPU code (nvidia-smi) is kept small and has not been run on a GPU machine here.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

from llama_api import errors

log = logging.getLogger(__name__)

# A worker with nothing loaded: the interpreter, msgspec and llama_api (measured: 23 MiB).
WORKER_BASE_BYTES = 24 * 2**20
# Of what is detected, leave this share to the server, the OS and everything else.
DEFAULT_SHARE = 0.9

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class Footprint(NamedTuple):
    """Bytes of host memory and of GPU memory (all devices together)."""

    host: int = 0
    gpu: int = 0

    def __add__(self, other):  # element-wise, not tuple concatenation
        return Footprint(self.host + other.host, self.gpu + other.gpu)


# -- sizes -------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    """'8G', '512M', '1.5GiB', '20GB', '1048576' -> bytes (K, M, G, T are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(text).upper())
    if not match:
        raise ValueError(f"not a size: {text!r} (write e.g. 8G, 512M or a number of bytes)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit])


def format_size(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# -- what the machine has ----------------------------------------------------------------

def _cgroup_limit() -> int | None:
    """A container's memory limit (cgroup v2, then v1); None when there is none."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 2**60:  # v1 writes a huge number for "none"
            return int(value)
    return None


def host_total() -> int | None:
    """RAM the server's processes may use: MemTotal, or the cgroup limit when lower."""
    total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    limit = _cgroup_limit()
    if total is None or (limit is not None and limit < total):
        return limit
    return total


def _nvidia_smi(*query: str) -> list[list[str]]:
    """Rows of `nvidia-smi --query-...` as lists of fields; [] without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[field.strip() for field in line.split(",")] for line in out.splitlines() if line.strip()]


def gpu_total() -> int | None:
    """VRAM of every NVIDIA GPU together, or None when there is none (untested on a GPU)."""
    sizes = [int(row[0]) * 2**20 for row in _nvidia_smi("--query-gpu=memory.total")
             if row and row[0].isdigit()]
    return sum(sizes) if sizes else None


def default_limits(max_memory: int | None, max_gpu_memory: int | None) -> Footprint:
    """The limits to schedule by; 0 means unlimited (nothing detected, nothing given)."""
    def pick(given, detect):
        if given is not None:
            return given
        total = detect()
        return int(total * DEFAULT_SHARE) if total else 0
    return Footprint(pick(max_memory, host_total), pick(max_gpu_memory, gpu_total))


# -- what a worker takes -----------------------------------------------------------------

def _vm_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except (OSError, ValueError):
        pass
    return found


def rss(pid: int) -> int | None:
    """Resident memory of a process and its descendants now (VmRSS, in bytes); None when
    the process can't be read (gone, or not Linux)."""
    own = _vm_rss(pid)
    if own is None:
        return None
    total, seen, pending = own, {pid}, _children(pid)
    while pending:
        child = pending.pop()
        if child not in seen:
            seen.add(child)
            total += _vm_rss(child) or 0
            pending += _children(child)
    return total


def gpu_used_by(pid: int) -> int | None:
    """GPU memory the process holds on all devices (nvidia-smi); None when unknown."""
    rows = _nvidia_smi("--query-compute-apps=pid,used_memory")
    if not rows:
        return None
    return sum(int(row[1]) * 2**20 for row in rows
               if len(row) == 2 and row[0] == str(pid) and row[1].isdigit())


# -- the budget --------------------------------------------------------------------------

class MemoryBudget:
    """Decides whether one more model fits beside those loaded."""

    def __init__(self, limits: Footprint, plugins=None, gpu: bool | None = None):
        self.limits = limits
        # Whether models may go on a GPU: there is one, even with --max-gpu-memory 0 (no limit).
        self.gpu = bool(limits.gpu) if gpu is None else gpu
        self._plugins = plugins  # a llama_api.workers.plugins.Plugins; found on first use if None
        self._estimates: dict[tuple, Footprint] = {}  # by spec and file modification time

    @classmethod
    def from_settings(cls, settings, plugins=None) -> MemoryBudget:
        limits = default_limits(settings.max_memory, settings.max_gpu_memory)
        gpu = bool(limits.gpu) or (settings.max_gpu_memory == 0 and gpu_total() is not None)
        log.info("memory limits: host %s, GPU %s",
                 format_size(limits.host) if limits.host else "unlimited",
                 format_size(limits.gpu) if limits.gpu else ("unlimited" if gpu else "none"))
        return cls(limits, plugins, gpu=gpu)

    def estimate(self, spec) -> Footprint:
        """What loading `spec` will take: the bare worker plus its plugin's estimate. The
        plugin reads files (and may run tools): call from a thread. Kept until the spec or
        its file's modification time changes."""
        key = (repr(spec), modification_time(spec.path))  # repr: any option, even a huge int
        if key in self._estimates:
            return self._estimates[key]
        if self._plugins is None:
            from llama_api.workers.plugins import Plugins

            self._plugins = Plugins()
        try:
            found = self._plugins.estimate_memory(spec, self.gpu)
        except Exception:  # a plugin's estimate is advice: never fail a request on it
            log.exception("estimate_memory failed for %s", spec.id)
            found = None
        model = Footprint(*(int(x or 0) for x in found)) if found else Footprint()
        need = model + Footprint(WORKER_BASE_BYTES, 0)
        log.info("model %s: estimated %s", spec.id, describe(need))
        self._estimates[key] = need
        return need

    def refuse_if_never_fits(self, model_id: str, need: Footprint) -> None:
        """503 for a model larger than a limit even with nothing else loaded."""
        for kind, flag, wanted, limit in (("host", "--max-memory", need.host, self.limits.host),
                                          ("GPU", "--max-gpu-memory", need.gpu, self.limits.gpu)):
            if limit and wanted > limit:
                raise errors.BackendUnavailable(
                    f"model {model_id!r} needs an estimated {format_size(wanted)} of {kind} "
                    f"memory ({wanted} bytes), more than the limit of {format_size(limit)} "
                    f"({limit} bytes, {flag}); it can't be loaded on this server",
                    code="insufficient_memory")

    def fits(self, need: Footprint, held: list[Footprint]) -> bool:
        used = sum(held, Footprint())
        return ((not self.limits.host or used.host + need.host <= self.limits.host)
                and (not self.limits.gpu or used.gpu + need.gpu <= self.limits.gpu))

    def measure(self, pid: int | None, held: Footprint, gpu: bool = False) -> Footprint:
        """A worker's footprint now: its RSS (it grows as caches fill), and with `gpu` its GPU
        memory where a GPU limit applies (nvidia-smi); what `held` says where unreadable.
        Reads /proc (and runs nvidia-smi): call from a thread."""
        host = rss(pid) if pid else None
        used_gpu = gpu_used_by(pid) if gpu and pid and self.limits.gpu else None
        return Footprint(held.host if host is None else host,
                         held.gpu if used_gpu is None else used_gpu)


def modification_time(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None


def describe(footprint: Footprint) -> str:
    """Reads '1.2 GiB host + 3.0 GiB GPU' (the GPU part only when there is some)."""
    text = f"{format_size(footprint.host)} host"
    return text + (f" + {format_size(footprint.gpu)} GPU" if footprint.gpu else "")
