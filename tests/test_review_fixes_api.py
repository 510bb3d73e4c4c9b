"""Fixes from the 2026-12 review on the API side: the responses store off the event loop,
`dimensions` decided once in the worker, and the routes' shared paths."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from llama_api import errors
from llama_api.api.embeddings import rows_of, shortened
from llama_api.api.responses_store import READ, ResponsesStore
from llama_api.workers.child import vectors_to_bytes


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


# -- `dimensions`: the worker sends full-width vectors, the HTTP layer cuts them -----------

def as_served(embeddings, dimensions) -> tuple[int, list[list[float]]]:
    """The vectors a backend returned, through the pipe's bytes and the HTTP layer's cut."""
    data, count, dims = vectors_to_bytes(embeddings)
    assert len(data) == count * dims * 4
    rows = shortened(rows_of(data, count, dims), dims, dimensions)
    return len(rows[0]), [row.tolist() for row in rows]


@pytest.mark.parametrize("as_numpy", [False, True], ids=["lists", "numpy"])
def test_fewer_dimensions_cut_each_vector_and_renormalize_it(as_numpy):
    rows = [[3.0, 4.0, 12.0], [0.0, 0.0, 5.0], [1.0, 1.0, 1.0]]
    embeddings = pytest.importorskip("numpy").array(rows) if as_numpy else rows
    dims, cut = as_served(embeddings, 2)
    assert (len(cut), dims) == (3, 2)
    assert cut[0] == pytest.approx([0.6, 0.8])
    assert cut[1] == [0.0, 0.0]  # a zero vector stays zero, not NaN
    assert cut[2] == pytest.approx([2 ** -0.5, 2 ** -0.5])
    # the model's own width, or none asked: the vectors as the backend made them
    for dimensions in (3, None):
        assert as_served(embeddings, dimensions) == (3, rows)


@pytest.mark.parametrize("as_numpy", [False, True], ids=["lists", "numpy"])
def test_more_dimensions_than_the_model_makes_is_a_400_naming_its_width(as_numpy):
    rows = [[0.5] * 8]
    embeddings = pytest.importorskip("numpy").array(rows) if as_numpy else rows
    with pytest.raises(errors.BadRequest) as info:
        as_served(embeddings, 9)
    assert info.value.param == "dimensions"
    assert "8-dimensional" in info.value.message
