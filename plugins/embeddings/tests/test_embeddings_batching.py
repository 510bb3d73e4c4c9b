"""Batching across requests: the Batcher alone, then MiniLM called from many threads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import llama_api_embeddings as plugin
from llama_api.contract.records import EmbedRequest
from llama_api_embeddings.batching import Batcher


def slow_compute(calls):
    def compute(rows):
        calls.append(list(rows))
        time.sleep(0.05)
        return np.array([[float(r), 1.0] for r in rows], dtype=np.float32)

    return compute


def run_concurrently(count, target):
    barrier = threading.Barrier(count)
    results = [None] * count
    errors = [None] * count

    def call(i):
        barrier.wait()
        try:
            results[i] = target(i)
        except Exception as exc:  # noqa: BLE001 - the test asserts on what each call raised
            errors[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results, errors


def test_concurrent_jobs_share_batches_and_get_their_own_rows():
    calls = []
    batcher = Batcher(slow_compute(calls), max_batch=64)
    try:
        results, errors = run_concurrently(
            20, lambda i: batcher.run([i * 10, i * 10 + 1, i * 10 + 2])
        )
        assert errors == [None] * 20
        for i, (rows, job) in enumerate(results):
            assert rows[:, 0].tolist() == [i * 10, i * 10 + 1, i * 10 + 2]
        assert max(job.batch_size for _, job in results) > 3
        assert len(calls) < 20
        assert all(len(rows) <= 64 for rows in calls)
    finally:
        batcher.close()


def test_batches_are_bounded():
    calls = []
    batcher = Batcher(slow_compute(calls), max_batch=4)
    try:
        _, errors = run_concurrently(12, lambda i: batcher.run([i]))
        assert errors == [None] * 12
        assert all(len(rows) <= 4 for rows in calls)
        assert sorted(r for rows in calls for r in rows) == list(range(12))
        big, job = batcher.run(list(range(10)))  # a job larger than a batch runs in slices
        assert big[:, 0].tolist() == list(range(10)) and job.batch_size == 4
    finally:
        batcher.close()


def test_a_large_request_does_not_hold_up_small_ones():
    calls = []
    batcher = Batcher(slow_compute(calls), max_batch=4)
    try:
        finished = {}

        def big():
            rows, _ = batcher.run(list(range(100, 140)))  # 10 batches of 4
            finished["big"] = time.perf_counter()
            assert rows[:, 0].tolist() == list(range(100, 140))

        thread = threading.Thread(target=big)
        thread.start()
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:  # the big job's first slice runs
            time.sleep(0.001)
        rows, job = batcher.run([1])
        finished["small"] = time.perf_counter()
        thread.join(10)
        assert rows[:, 0].tolist() == [1]
        assert finished["small"] < finished["big"]
        assert job.batch_requests == 2  # it shared a batch with a slice of the big one
        assert len(calls) <= 11 and all(len(c) <= 4 for c in calls)
    finally:
        batcher.close()


def test_a_lone_request_does_not_wait():
    # A batch that waited would take max_wait: 5 runs 10 s. The bounds leave a busy host room.
    batcher = Batcher(lambda rows: np.zeros((len(rows), 2), np.float32), max_wait=2.0)
    try:
        started = time.perf_counter()
        for _ in range(5):
            batcher.run(["x"])
        assert time.perf_counter() - started < 1.5
        batcher.announce()  # someone announced but gave up: the batch stops waiting for them
        batcher.withdraw()
        started = time.perf_counter()
        batcher.run(["x"])
        assert time.perf_counter() - started < 1.5
    finally:
        batcher.close()


def test_a_failing_batch_fails_each_of_its_callers_and_the_batcher_goes_on():
    def compute(rows):
        if "bad" in rows:
            raise ValueError("boom")
        time.sleep(0.02)
        return np.zeros((len(rows), 2), np.float32)

    batcher = Batcher(compute)
    try:
        with pytest.raises(ValueError):
            batcher.run(["bad"])
        rows, _ = batcher.run(["good"])
        assert rows.shape == (1, 2)
    finally:
        batcher.close()


def test_close_ends_the_thread():
    batcher = Batcher(lambda rows: np.zeros((len(rows), 1), np.float32))
    batcher.close()
    assert not batcher._thread.is_alive()
    with pytest.raises(RuntimeError):
        batcher.run(["late"])


def test_concurrent_minilm_requests_are_batched_and_in_order(minilm, helpers):
    texts = [f"request {i}: {'the cat sat' if i % 3 else 'a dog ran far away'} {i}"
             for i in range(32)]
    single = plugin.embed(model=minilm, request=EmbedRequest(input=texts)).embeddings

    def call(i):
        # Two texts per request, to check each caller's rows come back in its own order.
        pair = [texts[i], texts[(i + 1) % len(texts)]]
        return plugin.embed(model=minilm, request=EmbedRequest(input=pair))

    results, errors = run_concurrently(len(texts), call)
    assert errors == [None] * len(texts)
    for i, result in enumerate(results):
        expected = single[[i, (i + 1) % len(texts)]]
        assert (helpers.cosine(result.embeddings, expected) > 0.9999).all()
    assert max(r.batch_size for r in results) > 2
    assert max(r.batch_requests for r in results) > 1
