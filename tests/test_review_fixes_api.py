"""Fixes from the 2026-12 review on the API side: the responses store off the event loop,
`dimensions` decided once in the worker, and the routes' shared paths."""

from __future__ import annotations

import threading
import time

import anyio

from llama_api.responses_store import READ, ResponsesStore


def stored(n: int, created_at: float) -> dict:
    return {"id": f"r{n}", "created_at": created_at, "previous_response_id": None, "output": []}


def test_a_streams_write_does_not_wait_for_a_long_read(tmp_path):
    store = ResponsesStore(tmp_path)
    anyio.run(store.ready)
    reading = store._locks[READ]  # as a 1000-link `conversation` holds it
    reading.acquire()
    done = threading.Event()
    writer = threading.Thread(target=lambda: (store.put_blocking(stored(1, 1e10), []),
                                              done.set()))
    writer.start()
    try:
        assert done.wait(2), "put_blocking waited for the read connection"
    finally:
        reading.release()
        writer.join()
    assert anyio.run(store.get, "r1")["id"] == "r1"
    store.close()


def test_the_ttl_prune_runs_in_a_thread_not_in_the_streams_write(tmp_path):
    store = ResponsesStore(tmp_path, ttl=60)
    anyio.run(store.ready)
    store.put_blocking(stored(1, time.time() - 3600), [])  # expired already
    store._last_prune = time.monotonic() - 3600  # a prune is due
    store.put_blocking(stored(2, time.time()), [])
    with store._locks[READ]:
        rows = store._db[READ].execute("SELECT id FROM responses ORDER BY id").fetchall()
    assert [row[0] for row in rows] == ["r1", "r2"]  # the write on the loop did not prune

    on_threads = []
    prune = store._prune
    store._prune = lambda db: (on_threads.append(threading.current_thread()), prune(db))
    assert anyio.run(store.get, "r2")["id"] == "r2"  # the next call prunes, in its thread
    assert on_threads and on_threads[0] is not threading.main_thread()
    with store._locks[READ]:
        rows = store._db[READ].execute("SELECT id FROM responses").fetchall()
    assert [row[0] for row in rows] == ["r2"]
    store.close()


def test_put_stores_in_a_thread(tmp_path):
    store = ResponsesStore(tmp_path)
    threads = []
    put = store._put
    store._put = lambda db, *args: (threads.append(threading.current_thread()), put(db, *args))
    anyio.run(store.put, stored(1, 1e10), [{"id": "i"}])
    assert threads and threads[0] is not threading.main_thread()
    assert anyio.run(store.input_items, "r1") == [{"id": "i"}]
    store.close()
