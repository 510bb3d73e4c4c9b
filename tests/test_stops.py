"""Stop-string holdback: no part of a stop string is ever emitted."""

from __future__ import annotations

import random

from llama_api.text.stops import StopHoldback


def run(pieces, stops):
    holdback = StopHoldback(stops)
    out = []
    for piece in pieces:
        out.append(holdback.feed(piece))
        if holdback.stopped:
            return out, True
    out.append(holdback.flush())
    return out, False


def test_no_stops_passes_through():
    assert run(["a", "b"], []) == (["a", "b", ""], False)
    assert run(["a"], [""]) == (["a", ""], False)


def test_stop_split_across_pieces_is_never_emitted():
    out, stopped = run(["Hello U", "se", "r: more"], ["User:"])
    assert stopped
    assert out == ["Hello ", "", ""]
    assert "".join(out) == "Hello "


def test_partial_match_is_released_when_it_fails():
    out, stopped = run(["abc Us", "ual"], ["User:"])
    assert not stopped
    assert out == ["abc ", "Usual", ""]


def test_held_text_is_flushed_at_the_end():
    assert run(["the end\n"], ["\n\n"]) == (["the end", "\n"], False)


def test_earliest_stop_wins_and_overlapping_prefixes():
    holdback = StopHoldback(["world", "lo w"])
    assert holdback.feed("hello world") == "hel"
    assert holdback.matched == "lo w"
    assert run(["aaab"], ["aab"]) == (["a"], True)


def test_stop_at_the_very_start():
    assert run(["###", "rest"], ["###"]) == ([""], True)


def test_matches_a_reference_on_random_streams():
    rng = random.Random(7)
    for _ in range(500):
        text = "".join(rng.choice("ab\n:") for _ in range(rng.randint(0, 30)))
        stops = [
            "".join(rng.choice("ab\n:") for _ in range(rng.randint(1, 4)))
            for _ in range(rng.randint(1, 3))
        ]
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        hits = [text.find(s) for s in stops if s in text]
        expected = text[: min(hits)] if hits else text
        out, stopped = run(pieces, stops)
        assert "".join(out) == expected
        assert stopped == bool(hits)
        # Nothing emitted before the end may be retracted: every prefix of the output is final.
        emitted = ""
        for piece in out:
            emitted += piece
            assert expected.startswith(emitted)
