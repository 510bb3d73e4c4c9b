"""The Responses API's store (SQLite): a conversation follows previous_response_id until a
missing link cuts it; a stream's write never waits for a long read; the TTL prune and every
write run in a thread, off the event loop. Who may read a stored response:
test_responses_ownership.py; a full disk: test_faults.py."""

from __future__ import annotations

import threading
import time

import anyio

from llama_api.api.responses_store import READ, ResponseNotFound, ResponsesStore


def test_the_store_follows_previous_ids_and_a_missing_link_cuts_the_conversation(tmp_path):
    store = ResponsesStore(tmp_path)

    def said(text):
        return {"type": "message", "role": "user", "content": [{"type": "input_text",
                                                                 "text": text}]}

    for n, previous in ((1, None), (2, "r1"), (3, "r2")):
        store.put_blocking({"id": f"r{n}", "created_at": 1e10, "previous_response_id": previous,
                            "output": [said(f"out{n}")]}, [said(f"in{n}")], None)

    def texts(response_id):
        items = anyio.run(store.conversation, response_id, None)
        return [item["content"][0]["text"] for item in items]

    assert texts("r3") == ["in1", "out1", "in2", "out2", "in3", "out3"]
    anyio.run(store.delete, "r2", None)
    assert texts("r3") == ["in3", "out3"]
    try:
        anyio.run(store.conversation, "r2", None)
    except ResponseNotFound as exc:
        assert exc.status == 404 and exc.param == "previous_response_id"
    else:
        raise AssertionError("a deleted response continued")
    store.close()


def stored(n: int, created_at: float) -> dict:
    return {"id": f"r{n}", "created_at": created_at, "previous_response_id": None, "output": []}


def test_a_streams_write_does_not_wait_for_a_long_read(tmp_path):
    store = ResponsesStore(tmp_path)
    anyio.run(store.ready)
    reading = store._locks[READ]  # as a 1000-link `conversation` holds it
    reading.acquire()
    done = threading.Event()
    writer = threading.Thread(target=lambda: (store.put_blocking(stored(1, 1e10), [], None),
                                              done.set()))
    writer.start()
    try:
        assert done.wait(2), "put_blocking waited for the read connection"
    finally:
        reading.release()
        writer.join()
    assert anyio.run(store.get, "r1", None)["id"] == "r1"
    store.close()


def test_the_ttl_prune_runs_in_a_thread_not_in_the_streams_write(tmp_path):
    store = ResponsesStore(tmp_path, ttl=60)
    anyio.run(store.ready)
    store.put_blocking(stored(1, time.time() - 3600), [], None)  # expired already
    store._last_prune = time.monotonic() - 3600  # a prune is due
    store.put_blocking(stored(2, time.time()), [], None)
    with store._locks[READ]:
        rows = store._db[READ].execute("SELECT id FROM responses ORDER BY id").fetchall()
    assert [row[0] for row in rows] == ["r1", "r2"]  # the write on the loop did not prune

    on_threads = []
    prune = store._prune
    store._prune = lambda db: (on_threads.append(threading.current_thread()), prune(db))
    assert anyio.run(store.get, "r2", None)["id"] == "r2"  # the next call prunes, in its thread
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
    anyio.run(store.put, stored(1, 1e10), [{"id": "i"}], None)
    assert threads and threads[0] is not threading.main_thread()
    assert anyio.run(store.input_items, "r1", None) == [{"id": "i"}]
    store.close()
