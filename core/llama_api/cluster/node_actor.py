"""What runs on a Ray node: the worker process of one model, and its pipes relayed.

A `WorkerActor` (one per loaded model, named after it) starts `llama_api.workers.child` on
its node, with that node's Python and plugins, and relays bytes: `write` feeds the worker's
stdin; `read_stdout` and `read_stderr` are streaming generators of what it writes. The
frames inside are the local worker's, unchanged: the actor never decodes them.

The worker process is started by a thread that waits for it for its whole life: the worker
asks Linux to end it when that thread ends (PR_SET_PDEATHSIG, `llama_api.workers.lifeline`),
so it ends with the actor, even when the actor is killed or its node goes away.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from llama_api.workers.handle import SERVER_SECRETS

CHUNK = 1 << 16


class WorkerActor:
    """A worker process on this node, its pipes relayed (see the module docstring)."""

    def __init__(self, args: list[str], worker_env: dict[str, str]):
        env = {name: value for name, value in os.environ.items() if name not in SERVER_SECRETS}
        env.update(worker_env)
        started = threading.Event()
        self.process: subprocess.Popen | None = None
        self.start_error: BaseException | None = None

        def keep() -> None:
            try:
                self.process = subprocess.Popen(
                    [sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, env=env, bufsize=0)
            except BaseException as exc:  # noqa: BLE001 - told to the server by `pid`
                self.start_error = exc
                return
            finally:
                started.set()
            self.process.wait()

        threading.Thread(target=keep, name="worker-keeper", daemon=True).start()
        started.wait()
        self.write_lock = threading.Lock()

    def pid(self) -> int:
        """The worker's pid on this node (raises what starting it raised)."""
        if self.start_error is not None:
            raise self.start_error
        return self.process.pid

    def write(self, data: bytes) -> bool:
        """Feed the worker's stdin; False once it is closed."""
        with self.write_lock:
            try:
                self.process.stdin.write(data)
                return True
            except (BrokenPipeError, ValueError, OSError):
                return False

    def close_stdin(self) -> None:
        with self.write_lock:
            try:
                self.process.stdin.close()
            except OSError:
                pass

    def read_stdout(self):
        yield from self._read(self.process.stdout)

    def read_stderr(self):
        yield from self._read(self.process.stderr)

    @staticmethod
    def _read(pipe):
        fd = pipe.fileno()
        while chunk := os.read(fd, CHUNK):
            yield chunk

    def signal(self, sig: int) -> None:
        if self.process.returncode is None:
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass

    def wait(self) -> int:
        """The worker's exit status, once it has exited."""
        return self.process.wait()


# How many of the actor's methods may run at once: the two readers, a write, and a wait or
# signal beside them.
ACTOR_CONCURRENCY = 8
SIGTERM, SIGKILL = int(signal.SIGTERM), int(signal.SIGKILL)


def installed_plugins() -> list[str]:
    """The plugins installed on the node this runs on (a Ray task placed there)."""
    from llama_api.workers.plugins import Plugins

    return sorted(Plugins().names())
