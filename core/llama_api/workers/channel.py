"""The child's end of the worker pipe: frames in and out, and log lines the server reads.

Both ends use `llama_api.workers.protocol` for framing; this side writes from several
threads (requests, the outbox), so writes take a lock.
"""

from __future__ import annotations

import logging
import os
import threading

from llama_api.workers import protocol

log = logging.getLogger("llama_api.workers.child")


class Channel:
    """Reads frames from a file descriptor and writes frames to another, thread-safely."""

    def __init__(self, read_fd: int, write_fd: int):
        self._frames = protocol.read_frames(lambda size: os.read(read_fd, size))
        self._write_fd = write_fd
        self._lock = threading.Lock()

    def send(self, message) -> None:
        self.send_all([message])

    def send_all(self, messages: list) -> None:
        """The messages' frames in one write (one wake-up of the server for all of them)."""
        frames = [protocol.encode(message) for message in messages]
        with self._lock:
            view = memoryview(frames[0] if len(frames) == 1 else b"".join(frames))
            while view:
                written = os.write(self._write_fd, view)
                view = view[written:]

    def receive(self) -> protocol.ToWorker | None:
        """The next message, or None once the server closed the pipe."""
        try:
            body = next(self._frames, None)
        except protocol.TruncatedFrame as exc:  # the server died mid-write: nothing to answer
            log.warning("%s; stopping", exc)
            return None
        return None if body is None else protocol.to_worker_decoder.decode(body)


class LogLineFormatter(logging.Formatter):
    """One stderr line per record, carrying its level for the server (protocol.LOG_MARK)."""

    def __init__(self):
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return protocol.format_log_line(record.levelno, super().format(record))
