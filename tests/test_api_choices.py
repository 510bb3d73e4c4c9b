"""n > 1: a request's choices run at once on as many slots as the model has."""

from __future__ import annotations

import json

from support import USER, read_events


def test_two_choices_overlap_on_a_two_slot_model(client, events_file):
    assert client.post(client.v1 + "/chat/completions",
                       json={"model": "wide", "messages": USER, "max_tokens": 1}).status_code == 200
    events_file.unlink()
    reply = client.post(client.v1 + "/chat/completions",
                        json={"model": "wide", "messages": USER, "max_tokens": 40, "n": 2})
    assert reply.status_code == 200, reply.text  # ~2 s each, so the overlap is wide
    assert [c["message"]["content"] for c in reply.json()["choices"]] == [
        " ".join(["tick", "tock"] * 20)] * 2
    events = read_events(events_file)
    starts = [e["time"] for e in events if e["event"] == "start"]
    ends = [e["time"] for e in events if e["event"] == "end"]
    assert len(starts) == 2
    assert max(starts) < min(ends), "the two choices ran one after the other"


def test_more_choices_than_slots_all_run_and_stream_by_index(client, events_file):
    body = {"model": "wide", "prompt": ["a b", "c"], "n": 2, "max_tokens": 4, "stream": True}
    reply = client.post(client.v1 + "/completions", json=body)
    assert reply.status_code == 200, reply.text
    texts: dict[int, str] = {}
    finishes: dict[int, list] = {}
    for line in reply.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
                if choice["finish_reason"]:
                    finishes.setdefault(choice["index"], []).append(choice["finish_reason"])
    assert texts == {0: "a b a b", 1: "a b a b", 2: "c c c c", 3: "c c c c"}
    assert finishes == {i: ["length"] for i in range(4)}
    assert reply.text.rstrip().endswith("data: [DONE]")
    # Four choices on two slots: never more than two generations at once.
    events = sorted((e["time"], e["event"]) for e in read_events(events_file)
                    if e["event"] in ("start", "end") and e["model"] == "wide")
    running = peak = 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2


def test_a_one_slot_model_runs_choices_one_after_another(client, events_file):
    reply = client.post(client.v1 + "/chat/completions",
                        json={"model": "slow", "messages": USER, "max_tokens": 3, "n": 2})
    assert reply.status_code == 200, reply.text
    events = [e for e in read_events(events_file) if e["event"] in ("start", "end")]
    assert [e["event"] for e in events] == ["start", "end", "start", "end"]
