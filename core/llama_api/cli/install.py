"""`llama-api install PLUGIN`: pip-install a backend and its heavy dependencies with the right flags.

PINS, the versions of the heavy dependencies, come from pins.toml beside this file: the one
place for them, which the Makefile reads too.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

PINS_FILE = Path(__file__).with_name("pins.toml")


def read_pins(path: Path = PINS_FILE) -> dict[str, str]:
    """Name (`torch`, `tensorflow`) to pip requirement (`torch==...`)."""
    with path.open("rb") as file:
        return tomllib.load(file)


PINS = read_pins()


@dataclass
class Backend:
    distribution: str
    needs_torch: bool = False
    needs_cuda: bool = False
    extras: tuple[str, ...] = ()
    # Environment for building from source (llama-cpp-python compiles llama.cpp).
    build_env: dict[str, str] = field(default_factory=dict)
    cuda_build_env: dict[str, str] = field(default_factory=dict)
    # pip argument lists to run before the plugin, in order.
    before: tuple[tuple[str, ...], ...] = ()


# llama.cpp is compiled for the machine's CPU (-march=native), but without AMX on x86: some
# VMs report AMX and fault on its first tile instruction (SIGILL on every quantized prompt).
# With its multimodal library (mtmd), which vision models need; LLAMA_API_VISION=OFF in the
# environment leaves it out (~10% of the compile).
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
VISION = "OFF" if os.environ.get("LLAMA_API_VISION", "ON").upper() == "OFF" else "ON"
LLAMA_CPP_CMAKE = f"-DLLAVA_BUILD={VISION}" + (
    f' "-DCMAKE_C_FLAGS={NO_AMX}" "-DCMAKE_CXX_FLAGS={NO_AMX}"'
    if platform.machine() in ("x86_64", "AMD64") else "")

BACKENDS = {
    "llamacpp": Backend(
        "llama-api-llamacpp",
        build_env={"CMAKE_ARGS": LLAMA_CPP_CMAKE},
        cuda_build_env={"CMAKE_ARGS": LLAMA_CPP_CMAKE + " -DGGML_CUDA=on"},
    ),
    "embeddings": Backend("llama-api-embeddings", needs_torch=True),
    # tensorflow-cpu first: the plugin's `tfhub` extra would let pip pick the CUDA build.
    "tfhub": Backend("llama-api-embeddings", needs_torch=True, before=((PINS["tensorflow"],),)),
    "exllama": Backend("llama-api-exllama", needs_torch=True, needs_cuda=True,
                       extras=("v2", "v3")),
}


@dataclass
class Step:
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (prefix + " " if prefix else "") + shlex.join(self.args)


def local_source(distribution: str) -> Path | None:
    """In a checkout of this repository, install plugins from their folders."""
    root = Path(__file__).resolve().parents[3]
    folder = root / "plugins" / distribution.removeprefix("llama-api-")
    return folder if (folder / "pyproject.toml").exists() else None


def plan(name: str, *, force_cuda: bool = False, skip_torch_install: bool = False,
         torch_index_url: str | None = None, upgrade: bool = False) -> list[Step]:
    """The pip commands that install a backend, in order (torch first, pinned)."""
    if name not in BACKENDS:
        raise KeyError(name)
    backend = BACKENDS[name]
    pip = [sys.executable, "-m", "pip", "install"]
    steps = []
    if backend.needs_torch and not skip_torch_install:
        torch_args = pip + ([PINS["torch"]] if not (force_cuda or backend.needs_cuda) else ["torch"])
        if torch_index_url:
            torch_args += ["--index-url", torch_index_url]
        steps.append(Step(torch_args))
    steps.extend(Step(pip + list(args)) for args in backend.before)
    source = local_source(backend.distribution)
    target = str(source) if source else backend.distribution
    if backend.extras:
        target += "[" + ",".join(backend.extras) + "]"
    args = pip + (["--upgrade"] if upgrade else []) + [target]
    env = dict(backend.cuda_build_env if force_cuda else backend.build_env)
    if force_cuda and backend.cuda_build_env:
        # Rebuild llama-cpp-python with CUDA even when a CPU wheel is cached.
        steps.append(Step(args, env))
        steps.append(Step(pip + ["--force-reinstall", "--no-cache-dir", "--no-deps",
                                 "llama-cpp-python"], env))
    else:
        steps.append(Step(args, env))
    return steps


def run(steps: list[Step], dry_run: bool = False) -> int:
    for number, step in enumerate(steps, 1):
        print(f"[{number}/{len(steps)}] {step}", flush=True)
        if dry_run:
            continue
        result = subprocess.run(step.args, check=False, env={**os.environ, **step.env})
        if result.returncode != 0:
            print(f"step {number} failed with exit code {result.returncode}: {step}",
                  file=sys.stderr)
            return result.returncode
    return 0

