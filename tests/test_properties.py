"""Property tests (Hypothesis) for the pure parts every stream goes through: stop strings,
the reasoning split, UTF-8 decoding of token bytes, the tool-call parser and worker frames.
The common property: the result does not depend on how the input is cut into pieces."""

from __future__ import annotations

import time

import msgspec
import pytest

pytest.importorskip("hypothesis")  # a test extra (with schemathesis, which brings it)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_api.contract.records import Delta, ToolCallDelta, Usage
from llama_api.text.reasoning import ReasoningSplitter
from llama_api.text.stops import StopHoldback
from llama_api.workers import protocol

EXAMPLES = {"properties": 0, "examples": 0}


def counted(**strategies):
    """`given`, counting the examples each property runs (for the figure line)."""
    def decorate(test):
        def run(**drawn):
            EXAMPLES["examples"] += 1
            test(**drawn)
        run.__name__, run.__doc__ = test.__name__, test.__doc__
        EXAMPLES["properties"] += 1
        return given(**strategies)(run)
    return decorate


@pytest.fixture(scope="module", autouse=True)
def figure_line():
    started = time.perf_counter()
    yield
    print(f"\nPROPERTIES: {EXAMPLES['properties']} properties, {EXAMPLES['examples']} examples, "
          f"0 failures (a failure stops the run), {time.perf_counter() - started:.1f}s")


FAST = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

# A small alphabet makes stop strings and tags collide with the text often.
ALPHABET = "ab<>/ \n{}"
texts = st.text(alphabet=ALPHABET, max_size=40)
# Sometimes a real tag or marker in the middle, so that the interesting cases are common.
tag_texts = st.lists(st.sampled_from(["a", "b", " ", "\n", "<", ">", "/", "<think>",
                                      "</think>", "th", "ink"]),
                     max_size=16).map("".join)


def cuts(value):
    """A strategy for one way to cut `value` (a str or bytes) into consecutive pieces."""
    if not value:
        return st.just([value])
    positions = st.lists(st.integers(1, len(value) - 1), unique=True, max_size=len(value)) \
        if len(value) > 1 else st.just([])
    return positions.map(lambda points: [value[i:j] for i, j in
                                         zip([0, *sorted(points)], [*sorted(points), len(value)])])


def text_and_cut(strategy):
    return strategy.flatmap(lambda text: st.tuples(st.just(text), cuts(text)))


# -- stop strings ---------------------------------------------------------------------

def expected_before_stop(text: str, stops: list[str]) -> str:
    found = [i for i in (text.find(s) for s in stops if s) if i != -1]
    return text[:min(found)] if found else text


stop_lists = st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=4), max_size=3)


def hold_back(pieces: list[str], stops: list[str]) -> tuple[str, StopHoldback]:
    holdback = StopHoldback(stops)
    emitted = "".join(holdback.feed(piece) for piece in pieces)
    return emitted + holdback.flush(), holdback


@FAST
@counted(data=text_and_cut(texts), stops=stop_lists)
def test_stop_holdback_never_emits_a_stop_and_loses_nothing_before_it(data, stops):
    text, pieces = data
    out, holdback = hold_back(pieces, stops)
    assert not any(stop in out for stop in stops)  # never any stop string
    if holdback.stopped:  # the text up to the stop, then the stop: nothing lost
        assert text.startswith(out + holdback.matched + holdback.rest)
    else:
        assert out == text


def overlapping(stops: list[str]) -> bool:
    """Whether one stop holds another or ends with another's start: then which one ends the
    text first depends on where the pieces were cut."""
    return any(b in a or any(b.startswith(a[i:]) for i in range(1, len(a)))
               for a in stops for b in stops if a != b)


@FAST
@counted(data=text_and_cut(texts), stops=stop_lists)
def test_stop_holdback_is_the_same_for_every_cut_when_stops_do_not_overlap(data, stops):
    text, pieces = data
    if overlapping(stops):
        stops = stops[:1]
    out, _ = hold_back(pieces, stops)
    assert out == expected_before_stop(text, stops), (text, pieces, stops)


def test_stop_holdback_with_overlapping_stops_is_the_same_for_every_cut():
    stops = ["/", "</<"]
    assert hold_back(["<", "/", "<"], stops)[0] == hold_back(["</<"], stops)[0]


# -- reasoning split ------------------------------------------------------------------

def split(pieces: list[str], inside: bool = False) -> tuple[str, str]:
    splitter = ReasoningSplitter(inside=inside)
    reasoning, answer = "", ""
    for piece in pieces:
        r, a = splitter.feed(piece)
        reasoning, answer = reasoning + r, answer + a
    r, a = splitter.flush()
    return reasoning + r, answer + a


@FAST
@counted(data=text_and_cut(tag_texts), inside=st.booleans())
def test_reasoning_split_is_the_same_for_every_cut(data, inside):
    text, pieces = data
    assert split(pieces, inside) == split([text], inside)


@FAST
@counted(thought=st.text(alphabet="ab \n", max_size=12), answer=st.text(alphabet="ab \n<>",
                                                                       max_size=12),
       data=st.data())
def test_a_leading_think_block_becomes_reasoning(thought, answer, data):
    text = f"<think>{thought}</think>{answer}"
    pieces = data.draw(cuts(text))
    reasoning, rest = split(pieces)
    assert reasoning == thought.lstrip("\n")
    assert rest == answer.lstrip("\n")
    assert "<think>" not in reasoning + rest and "</think>" not in reasoning


# -- UTF-8 from token bytes (llama.cpp's text stream) -----------------------------------

textstream = pytest.importorskip("llama_api_llamacpp.textstream")

unicode_texts = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30)


@FAST
@counted(data=unicode_texts.map(lambda t: t.encode()).flatmap(
    lambda raw: st.tuples(st.just(raw), cuts(raw))))
def test_utf8_stream_sends_whole_characters_for_every_cut(data):
    raw, pieces = data
    stream = textstream.TextStream()
    sent = [stream.feed(piece) for piece in pieces] + [stream.finish()]
    assert "".join(sent) == raw.decode()
    assert all("\ufffd" not in piece for piece in sent if "\ufffd" not in raw.decode())


@FAST
@counted(data=st.binary(max_size=40).flatmap(lambda raw: st.tuples(st.just(raw), cuts(raw))))
def test_invalid_utf8_decodes_the_same_for_every_cut(data):
    raw, pieces = data
    stream = textstream.TextStream()
    out = "".join(stream.feed(piece) for piece in pieces) + stream.finish()
    assert out == raw.decode("utf-8", errors="replace")


@FAST
@counted(text=unicode_texts, stop=st.text(min_size=1, max_size=3), data=st.data())
def test_utf8_stream_holds_back_stop_strings_across_byte_cuts(text, stop, data):
    raw = (text + stop + text).encode()
    pieces = data.draw(cuts(raw))
    stream = textstream.TextStream(stop=[stop])
    out = "".join(stream.feed(piece) for piece in pieces) + stream.finish()
    assert out == expected_before_stop(text + stop + text, [stop])
    assert stream.stopped and stream.matched == stop


# -- tool calls in generated text -----------------------------------------------------

tools = pytest.importorskip("llama_api_llamacpp.tools")

NAMES = {"get_weather", "add"}
call_json = st.builds(
    lambda name, city: f'{{"name": "{name}", "arguments": {{"city": "{city}"}}}}',
    st.sampled_from(sorted(NAMES) + ["unknown"]), st.text(alphabet="ab xy", max_size=6))
tool_texts = st.one_of(
    call_json,
    st.lists(call_json, min_size=1, max_size=2).map(lambda calls: "[" + ", ".join(calls) + "]"),
    st.tuples(st.text(alphabet="ab \n", max_size=8), call_json).map(
        lambda pair: f"{pair[0]}<tool_call>{pair[1]}</tool_call>"),
    st.text(alphabet="ab {[<>", max_size=20),
    st.sampled_from(["<tool_call>", "<tool_", "  {\"name\": ", "answer <tool_call>{bad"]),
)


def parse_stream(pieces: list[str]):
    parser = tools.AutoToolCalls(NAMES)
    sent = "".join(parser.feed(piece) for piece in pieces)
    calls, rest = parser.finish()
    return sent, calls, rest


@FAST
@counted(data=text_and_cut(tool_texts))
def test_tool_call_parser_gives_the_same_result_for_every_cut(data):
    text, pieces = data
    sent, calls, rest = parse_stream(pieces)
    whole_sent, whole_calls, whole_rest = parse_stream([text])
    assert calls == whole_calls
    # Space before a call may go out as text when the cut falls right after it (see below).
    assert (sent + rest).strip() == (whole_sent + whole_rest).strip()
    if calls is None:  # not a call: all of the text reaches the client, in order
        assert sent + rest == text
    else:
        assert all(call["name"] in NAMES for call in calls)


def test_space_before_a_tool_call_goes_the_same_way_for_every_cut():
    text = ' <tool_call>{"name": "add", "arguments": {}}</tool_call>'
    assert parse_stream([" <", text[2:]]) == parse_stream([text])


# -- worker frames --------------------------------------------------------------------

deltas = st.builds(
    Delta, text=st.text(max_size=20),
    reasoning=st.text(max_size=5),
    finish_reason=st.sampled_from([None, "stop", "length"]),
    usage=st.one_of(st.none(), st.builds(Usage, prompt_tokens=st.integers(0, 10**6),
                                         completion_tokens=st.integers(0, 10**6))),
    tool_calls=st.one_of(st.none(), st.lists(st.builds(
        ToolCallDelta, index=st.integers(0, 3), id=st.one_of(st.none(), st.text(max_size=8)),
        name=st.one_of(st.none(), st.text(max_size=8)), arguments=st.text(max_size=8)),
        max_size=2)))
messages = st.one_of(
    st.builds(protocol.Deltas, id=st.integers(0, 2**31), deltas=st.lists(deltas, max_size=4),
              done=st.booleans()),
    st.builds(protocol.Failed, id=st.integers(0, 2**31), kind=st.sampled_from(
        ["BadRequest", "LlamaApiError"]), message=st.text(max_size=30),
        param=st.one_of(st.none(), st.text(max_size=5))),
    st.builds(protocol.Embedded, id=st.integers(0, 2**31), data=st.binary(max_size=64),
              count=st.integers(0, 4), dims=st.integers(0, 16)),
)


def frames_of(messages_: list) -> bytes:
    return b"".join(protocol.encode(message) for message in messages_)


@FAST
@counted(sent=st.lists(messages, max_size=5), data=st.data())
def test_frames_round_trip_for_every_cut(sent, data):
    stream = frames_of(sent)
    pieces = data.draw(cuts(stream))
    reader = protocol.FrameReader()
    bodies = [body for piece in pieces for body in reader.feed(piece)]
    assert [protocol.from_worker_decoder.decode(body) for body in bodies] == sent


def reading(stream: bytes, chunk_size: int):
    """read_frames over `stream`, as over a pipe whose writer then closed it."""
    position = 0

    def read(size: int) -> bytes:
        nonlocal position
        piece = stream[position:position + min(size, chunk_size)]
        position += len(piece)
        return piece

    return protocol.read_frames(read)


@FAST
@counted(sent=st.lists(messages, min_size=1, max_size=4), data=st.data())
def test_a_truncated_stream_ends_without_hanging_and_keeps_only_whole_frames(sent, data):
    stream = frames_of(sent)
    cut = data.draw(st.integers(0, len(stream) - 1))
    started = time.monotonic()
    bodies, truncated = [], False
    try:
        for body in reading(stream[:cut], chunk_size=data.draw(st.integers(1, 64))):
            bodies.append(body)  # noqa: PERF402 (the frames read before the error)
    except protocol.TruncatedFrame:
        truncated = True
    assert time.monotonic() - started < 10  # it ends (a hang would not), even on a slow host
    decoded = [protocol.from_worker_decoder.decode(body) for body in bodies]
    assert decoded == sent[:len(decoded)] and len(decoded) < len(sent)
    # A cut between two frames is a clean end; a cut inside one is an error.
    assert truncated == (cut != len(frames_of(sent[:len(decoded)])))


@FAST
@counted(sent=st.lists(messages, min_size=1, max_size=3), data=st.data())
def test_a_corrupt_frame_body_is_a_decode_error(sent, data):
    """Flipped bytes in a body: the decoder raises (or, rarely, still reads a valid message
    of the protocol's types); it never returns something else."""
    body = protocol.encode(sent[0])[protocol.HEADER.size:]
    index = data.draw(st.integers(0, len(body) - 1))
    corrupt = body[:index] + bytes([body[index] ^ data.draw(st.integers(1, 255))]) + \
        body[index + 1:]
    try:
        message = protocol.from_worker_decoder.decode(corrupt)
    except msgspec.DecodeError:  # ValidationError is one too
        return
    assert isinstance(message, protocol.FromWorker.__args__)


def test_a_stream_that_ends_inside_a_frame_is_an_error():
    stream = frames_of([protocol.Failed(id=1, message="cut")])
    with pytest.raises(protocol.TruncatedFrame):
        list(reading(stream[:-2], chunk_size=64))
