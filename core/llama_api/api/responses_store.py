"""Stored responses (the Responses API's `store`): one SQLite file in the data directory.

Each row holds a response object, the input items it was asked with, and the id of the
response it continued, so that `previous_response_id` can rebuild the conversation. The
file is opened on first use (a server that never serves /v1/responses never touches the
disk), in WAL mode so that readers never wait for a writer. Responses older than the TTL
are invisible at once and deleted in a worker thread, when the store opens and at most once
a minute after; a prune that can't write (a full disk) is logged and tried again later, and
never fails the call it came before. Every call runs in a worker thread (`anyio.to_thread`)
except the stream's `put_blocking`, one INSERT; reads and writes have a connection each, so that the INSERT
never waits for a long read (a 1000-link conversation).
Any SQLite or file-system error becomes `StoreUnavailable` (503, naming the file); a write
that found no room says so. SQLite's transactions leave nothing half-written behind.

Each response belongs to the API key that stored it: its row holds an HMAC of the key (under
a random secret kept in the file), never the key, and every read, continuation and delete
matches it, so another key sees exactly what it sees for an id that does not exist. With no
keys configured the owner is None, as it is for every row written then.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio

from llama_api import errors

log = logging.getLogger(__name__)

FILE_NAME = "responses.sqlite3"
PRUNE_EVERY = 60.0  # seconds between prunes on write
MAX_CHAIN = 1000  # previous_response_id links followed at most
READ, WRITE = "read", "write"  # the two connections
# What SQLite says when a write finds no room: a full disk, or a file-size limit (EFBIG).
NO_ROOM = ("SQLITE_FULL", "SQLITE_IOERR_WRITE")

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    previous_id TEXT,
    input_items TEXT NOT NULL,
    response TEXT NOT NULL,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses (created_at);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


def default_data_dir() -> Path:
    """Where llama-api keeps its state: $XDG_DATA_HOME/llama-api, or ~/.local/share/llama-api."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "llama-api"


class StoreUnavailable(errors.LlamaApiError):
    status = 503
    type = "server_error"
    code = "store_unavailable"


class ResponseNotFound(errors.LlamaApiError):
    status = 404
    type = "invalid_request_error"

    def __init__(self, response_id: str, param: str | None = None):
        super().__init__(f"Response with id {response_id!r} not found.", param=param)


class ResponsesStore:
    """The stored responses. `ttl` in seconds; 0 keeps them until deleted. `key` on every
    call: the API key the request was let in with (None when the server has none)."""

    def __init__(self, data_dir: Path, ttl: float = 0):
        self.path = Path(data_dir) / FILE_NAME
        self.ttl = ttl
        self._db: dict[str, sqlite3.Connection] = {}  # READ and WRITE, opened on first use
        self._locks = {READ: threading.Lock(), WRITE: threading.Lock()}
        self._last_prune = -PRUNE_EVERY - 1.0  # due at the first call
        self._secret: bytes | None = None  # the owners' HMAC key, read when the file opens

    # -- the async API the routes use ---------------------------------------------------

    async def ready(self) -> None:
        """Open the file now (in a thread), so that a store that can't open fails first."""
        await self._run(lambda db: None)
        await self._run(lambda db: None, role=WRITE)

    async def put(self, response: dict[str, Any], input_items: list[dict[str, Any]],
                  key: bytes | None) -> None:
        """Keep a finished response."""
        await self._run(self._put, response, input_items, key, role=WRITE)

    def put_blocking(self, response: dict[str, Any], input_items: list[dict[str, Any]],
                     key: bytes | None) -> None:
        """`put` on the caller's thread, for a stream renderer, which stores the response
        before it sends `response.completed`: one INSERT on the writer connection (opened
        by `ready`), which no read holds."""
        self._locked(WRITE, self._put, response, input_items, key)

    async def get(self, response_id: str, key: bytes | None,
                  param: str | None = None) -> dict[str, Any]:
        """The stored response, or ResponseNotFound."""
        row = await self._run(self._row, response_id, key, "response")
        if row is None:
            raise ResponseNotFound(response_id, param)
        return json.loads(row[0])

    async def input_items(self, response_id: str, key: bytes | None) -> list[dict[str, Any]]:
        row = await self._run(self._row, response_id, key, "input_items")
        if row is None:
            raise ResponseNotFound(response_id)
        return json.loads(row[0])

    async def conversation(self, response_id: str, key: bytes | None) -> list[dict[str, Any]]:
        """The input and output items of `response_id` and every response it continued,
        oldest first, as the next turn's history."""
        chain = await self._run(self._chain, response_id, key)
        if not chain:
            raise ResponseNotFound(response_id, "previous_response_id")
        return [item for input_items, response in chain
                for item in [*input_items, *response["output"]]]

    async def delete(self, response_id: str, key: bytes | None) -> None:
        if not await self._run(self._delete, response_id, key, role=WRITE):
            raise ResponseNotFound(response_id)

    def close(self) -> None:
        for role, lock in self._locks.items():
            with lock:
                db = self._db.pop(role, None)
                if db is not None:
                    db.close()

    # -- in the worker thread -------------------------------------------------------------

    async def _run(self, function, *args, role: str = READ):
        return await anyio.to_thread.run_sync(self._pruned_then, role, function, *args)

    def _pruned_then(self, role: str, function, *args):
        if time.monotonic() - self._last_prune > PRUNE_EVERY:
            self._last_prune = time.monotonic()
            try:
                self._locked(WRITE, self._prune)
            except StoreUnavailable as exc:  # expired rows are invisible already: serve on
                log.warning("pruning expired responses failed (retried in %.0fs): %s",
                            PRUNE_EVERY, exc.message)
        return self._locked(role, function, *args)

    def _locked(self, role: str, function, *args):
        with self._locks[role]:
            try:
                return function(self._connection(role), *args)
            except (sqlite3.Error, OSError) as exc:
                why = str(exc)
                if getattr(exc, "sqlite_errorname", None) in NO_ROOM:
                    why += " (a write found no room: is the disk full?)"
                raise StoreUnavailable(
                    f"The responses store {self.path} is unavailable: {why}.") from None

    def _connection(self, role: str) -> sqlite3.Connection:
        db = self._db.get(role)
        if db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # durable across crashes, not power cuts
                db.execute("PRAGMA busy_timeout=2000")
                db.executescript(SCHEMA)
                columns = {row[1] for row in db.execute("PRAGMA table_info(responses)")}
                if "owner" not in columns:  # a file written before responses had owners
                    db.execute("ALTER TABLE responses ADD COLUMN owner TEXT")
                db.execute("INSERT OR IGNORE INTO meta VALUES ('owner_secret', ?)",
                           (secrets.token_bytes(32),))
                self._secret = db.execute(
                    "SELECT value FROM meta WHERE name = 'owner_secret'").fetchone()[0]
            except sqlite3.Error:
                db.close()
                raise
            self._db[role] = db
        return db

    def _owner(self, key: bytes | None) -> str | None:
        if key is None:
            return None
        return hmac.new(self._secret, key, hashlib.sha256).hexdigest()

    def _oldest_kept(self) -> float:
        return time.time() - self.ttl if self.ttl > 0 else float("-inf")

    def _prune(self, db: sqlite3.Connection) -> None:
        if self.ttl > 0:
            db.execute("DELETE FROM responses WHERE created_at < ?", (self._oldest_kept(),))

    def _put(self, db, response, input_items, key) -> None:
        db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)", (
            response["id"], response["created_at"], response.get("previous_response_id"),
            json.dumps(input_items), json.dumps(response), self._owner(key)))

    def _row(self, db, response_id, key, columns):
        return db.execute(f"SELECT {columns} FROM responses WHERE id = ? AND owner IS ? "
                          "AND created_at >= ?",
                          (response_id, self._owner(key), self._oldest_kept())).fetchone()

    def _chain(self, db, response_id, key):
        chain, next_id = [], response_id
        while next_id is not None and len(chain) < MAX_CHAIN:
            row = self._row(db, next_id, key, "input_items, response, previous_id")
            if row is None:
                break  # a link that expired or was deleted: the conversation starts after it
            chain.append((json.loads(row[0]), json.loads(row[1])))
            next_id = row[2]
        return chain[::-1]

    def _delete(self, db, response_id, key) -> bool:
        return db.execute("DELETE FROM responses WHERE id = ? AND owner IS ?",
                          (response_id, self._owner(key))).rowcount > 0
