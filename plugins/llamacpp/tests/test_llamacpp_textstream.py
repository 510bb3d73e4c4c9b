"""TextStream: whole UTF-8 characters only, and nothing of a stop string ever sent."""

from __future__ import annotations

from llama_api_llamacpp.textstream import TextStream


def feed_all(stream, pieces):
    out = [stream.feed(p) for p in pieces]
    out.append(stream.finish())
    return out


def test_multibyte_character_split_across_tokens_is_sent_whole():
    data = "日本€é".encode()
    out = feed_all(TextStream(), [bytes([b]) for b in data])
    assert "".join(out) == "日本€é"
    assert all("\ufffd" not in piece for piece in out)
    assert [p for p in out if p] == ["日", "本", "€", "é"]


def test_stop_string_is_never_sent_even_across_pieces():
    stream = TextStream(stop=["STOP"])
    out = feed_all(stream, [b"hello S", b"T", b"O", b"P and more"])
    assert "".join(out) == "hello "
    assert stream.stopped
    assert "S" not in "".join(out)


def test_held_prefix_is_released_when_it_turns_out_not_to_be_a_stop():
    stream = TextStream(stop=["STOP"])
    assert stream.feed(b"a ST") == "a "
    assert stream.feed(b"ORM") == "STORM"
    assert stream.finish() == ""
    assert not stream.stopped


def test_earliest_of_several_stop_strings_wins():
    stream = TextStream(stop=["world", "lo w"])
    assert "".join(feed_all(stream, [b"hello world"])) == "hel"


def test_incomplete_character_at_the_end_becomes_a_replacement():
    stream = TextStream()
    assert stream.feed("é".encode()[:1]) == ""
    assert stream.finish() == "\ufffd"


def test_stop_string_with_multibyte_characters():
    stream = TextStream(stop=["€!"])
    data = "price 5€! done".encode()
    out = feed_all(stream, [bytes([b]) for b in data])
    assert "".join(out) == "price 5"
