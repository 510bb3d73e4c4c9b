"""How a worker frames a generation: a stream's first delta at once and then one frame per
tick; a request the client reads whole (`stream=False`) in as few frames as the request
timeout allows."""

from __future__ import annotations

import json

import anyio

from llama_api import protocol
from llama_api.testing.conformance import running_worker
from llama_api.types import GenerateRequest, ModelSpec
from llama_api.worker import HELD_INTERVAL


def frames_of(spec: ModelSpec, requests: list[GenerateRequest]) -> list[tuple[int, str]]:
    """(deltas frames, text) of each request, run one after another on one real worker."""
    async def main():
        async with running_worker(spec) as worker:
            counts: dict[int, int] = {}
            dispatch = worker._dispatch

            def counting(message):
                if isinstance(message, protocol.Deltas):
                    counts[message.id] = counts.get(message.id, 0) + 1
                dispatch(message)

            worker._dispatch = counting
            results = []
            for request in requests:
                before = set(counts)
                text = "".join([delta.text async for delta in worker.generate(request)])
                (request_id,) = set(counts) - before
                results.append((counts[request_id], text))
            return results

    return anyio.run(main)


def test_a_request_not_streamed_is_one_frame_and_a_stream_starts_at_once(tmp_path):
    path = tmp_path / "slow.echo"
    path.write_text(json.dumps({"delay": 0.01}))  # 4 tokens: 0.04 s, well under a held tick
    spec = ModelSpec(id="slow", backend="echo", path=str(path), plugin="echo")
    ask = {"prompt": "one two three four", "max_tokens": 4}
    (held, held_text), (streamed, streamed_text), (longer, _) = frames_of(spec, [
        GenerateRequest(**ask, stream=False), GenerateRequest(**ask),
        GenerateRequest(prompt="tick tock", max_tokens=15)])  # 0.15 s
    assert held == 1
    assert held_text == streamed_text and held_text
    assert streamed >= 2  # the first delta at once, then a frame per 25 ms tick
    # ticks do not wait for the held request's longer one (the writer was notified)
    assert longer >= 4


def test_a_long_request_not_streamed_still_sends_a_frame_each_held_interval(tmp_path):
    path = tmp_path / "slow.echo"
    path.write_text(json.dumps({"delay": 0.05}))
    spec = ModelSpec(id="slow", backend="echo", path=str(path), plugin="echo")
    tokens = int(2.5 * HELD_INTERVAL / 0.05)  # 2.5 intervals of generation
    [(held, _)] = frames_of(spec, [GenerateRequest(prompt="tick tock", max_tokens=tokens,
                                                   stream=False)])
    assert 2 <= held <= 4  # the request timeout sees progress, yet not a frame per token
