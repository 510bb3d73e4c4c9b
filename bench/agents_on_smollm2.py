"""Claude Code and Codex, each with its default settings, take one turn against SmolLM2 given a
large context: the check of issue 17 that is too slow for `make test` (an agent's first
request is 12,000+ tokens; ~1 minute each on 2 cores).

    .venv/bin/python -m bench.agents_on_smollm2 [claude] [codex]

It serves SmolLM2 (`n_ctx = 32768`, `max_tokens = 1024`, `flash_attn = "off"`, in a
models.toml it writes), runs
each CLI from tests/node (`make test` installs them) with only the server's address, a dummy
key and the model set, and prints each one's exit status, time and the server's request log.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from node_clients import (
    claude_command,
    claude_env,
    codex_command,
    codex_env,
    require_node_clients,
    run_client,
)

from bench.models import smollm2_path
from llama_api.testing.server import serve

MODELS_TOML = """\
[models.smollm2]
backend = "llamacpp"
path = "{path}"
max_tokens = 1024

[models.smollm2.options]
n_ctx = 32768
flash_attn = "off"  # on the CPU, 3-4x the decode rate at 4k+ tokens of context
"""
AGENTS = {"claude": (claude_command, claude_env), "codex": (codex_command, codex_env)}


def main(argv: list[str]) -> int:
    require_node_clients()
    chosen = argv or list(AGENTS)
    failed = 0
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "models.toml").write_text(MODELS_TOML.format(path=smollm2_path()))
        with serve("--config", str(folder / "models.toml"), "--models-dir", str(folder / "none"),
                   "--no-ui", env={"LLAMA_API_PLUGINS": "llamacpp"}) as server:
            for name in chosen:
                command, env = AGENTS[name]
                home, work = folder / name / "home", folder / name / "work"
                home.mkdir(parents=True)
                work.mkdir()
                started = time.monotonic()
                finished = run_client(command("Say hello."), env(server.url, "smollm2", home),
                                      work, timeout=1200)
                print(f"== {name}: exit {finished.returncode} in "
                      f"{time.monotonic() - started:.1f} s\n{finished}", flush=True)
                failed += finished.returncode != 0
            print("== the server's request lines:")
            print("\n".join(line for line in server.log().splitlines()
                            if "llama_api.requests" in line))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
