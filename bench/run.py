"""`python -m bench`: run the figures of issue 11 in one run and write docs/benchmarks.md.

    .venv/bin/python -m bench [--rounds 5] [--tokens 128] [--figures 1,2,...] [--quick]

The compared servers (llama-api, llama.cpp's llama-server, llama-cpp-python's server) are
up for the whole run; figures that need other servers start and stop them. llama-server is
built once into ~/.cache/llama-api-bench (bench/build_llama_server.sh, ~25 minutes on 2
cores). `--quick` is a smoke run: 1 round, 16 tokens, written under the cache, not docs/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from bench import (
    figures_decode,
    figures_prefill,
    figures_ray,
    figures_service,
    figures_speculative,
    report,
    servers,
)
from bench.context import API, CPP, PY, Bench
from bench.models import CACHE, SMOLLM2, models_dir, smollm2_path

FIGURES = {1: figures_decode.one_stream, 2: figures_decode.concurrency,
           3: figures_decode.contention, 4: figures_decode.two_models,
           5: figures_service.cold_start, 6: figures_service.embeddings,
           7: figures_service.overhead, 8: figures_decode.n_choices,
           9: figures_speculative.speculative, 10: figures_prefill.prefill,
           11: figures_ray.ray_hop}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per figure (default 5)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per answer (default 128)")
    parser.add_argument("--concurrency", default="1,2,4,8", help="figure 2's stream counts")
    parser.add_argument("--overhead-requests", type=int, default=200,
                        help="1-token requests per round in figure 7 (default 200)")
    parser.add_argument("--threads", type=int, default=None,
                        help="compute threads for llama-server, llama_cpp.server and in-process "
                             "(default: llama-server's own default; the cores for the others)")
    parser.add_argument("--figures", default="1,2,3,4,5,6,7,8,9,10,11",
                        help="which figures, e.g. 1,3")
    parser.add_argument("--llama-server", type=Path, default=None,
                        help="a llama-server binary to use instead of building one")
    parser.add_argument("--output", type=Path, default=None,
                        help="the page to write (default docs/benchmarks.md; with --quick, "
                             "under the cache)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 round, 16 tokens, 20 overhead requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.tokens, args.overhead_requests = 1, 16, 20
        args.output = args.output or CACHE / "quick" / "benchmarks.md"
    return args


def machine() -> dict[str, str]:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {"cores": str(os.cpu_count()), "CPU": model, "load average at start (1, 5, 15 min)": load,
            "system": f"{platform.system()} {platform.release()}",
            "Python": platform.python_version()}


def versions(binary: Path) -> dict[str, str]:
    found = {}
    for dist in ("llama-api", "llama-api-llamacpp", "llama-api-embeddings", "llama_cpp_python",
                 "httpx"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    done = subprocess.run([str(binary), "--version"], check=False, capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    found["llama-server"] = "; ".join(line for line in lines if "version" in line or "built" in line)
    return found


def start_compared(bench: Bench, threads: int) -> None:
    """The servers up for the whole run, all on SmolLM2 with the same thread count."""
    gguf = smollm2_path()
    bench.servers[API] = servers.llama_api(models_dir("main", {}))
    bench.servers[CPP] = servers.llama_server(bench.llama_server_binary, gguf, SMOLLM2,
                                              threads=threads, parallel=4)
    why_not = servers.python_server_ready()
    if why_not is None:
        bench.servers[PY] = servers.python_server(gguf, SMOLLM2, bench.threads)
    else:
        bench.skipped[PY] = why_not
    for server in bench.servers.values():
        bench.start(server)


def main(argv=None) -> int:
    args = parse_args(argv)
    chosen = [int(n) for n in args.figures.split(",")]
    header = machine()
    began = time.perf_counter()
    if args.llama_server is None:
        print("llama-server: reusing or building it (the first build takes ~25 minutes; log: "
              f"{CACHE}/build.log)", flush=True)
    binary = args.llama_server or servers.llama_server_binary()
    bench = Bench(rounds=args.rounds, tokens=args.tokens, threads=args.threads or os.cpu_count(),
                  concurrency=[int(n) for n in args.concurrency.split(",")],
                  overhead_requests=args.overhead_requests, llama_server_binary=binary)
    header.update({f"version of {k}": v for k, v in versions(binary).items()})
    header["settings"] = (f"{args.rounds} rounds, {args.tokens} tokens per answer, threads: "
                          f"{args.threads or 'each server default (llama-api: its budget)'}")
    header["command"] = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    figures = {}
    try:
        start_compared(bench, args.threads)
        for number in chosen:
            bench.log(f"figure {number}: {FIGURES[number].__name__}")
            try:
                for figure in FIGURES[number](bench):
                    figures[figure.key] = figure
            except Exception as exc:  # noqa: BLE001 -- one broken figure must not lose the others
                bench.skipped[f"figure {number}"] = f"{type(exc).__name__}: {exc}"
                bench.log(f"figure {number} failed: {exc}")
    finally:
        for server in bench.servers.values():
            server.stop()
    header["load average at the end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    header["run time"] = f"{time.perf_counter() - began:.0f} s"
    page = report.write(figures, bench.concurrency, args.rounds, header, bench.commands, bench.skipped,
                        args.output)
    raw = page.with_suffix(".json") if args.quick else CACHE / "last-run.json"
    raw.write_text(json.dumps({"header": header, "figures": [f.to_json() for f in figures.values()],
                               "skipped": bench.skipped}, indent=1))
    print(page.read_text())
    bench.log(f"wrote {page} (raw values: {raw})")
    return 1 if any(key.startswith("figure") for key in bench.skipped) else 0
