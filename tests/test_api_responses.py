"""The Responses API end to end: the openai package's client against the app in-process over
echo workers (the echo model repeats the prompt's words; ONCE ends its turn, CALL calls the
tools, <think> thinks)."""

from __future__ import annotations

import json
import sqlite3

import openai
import pytest
from support import read_events, sse

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}


@pytest.fixture(scope="module")
def data_home(tmp_path_factory):
    """The user's data dir for the module's app: the default data dir lies under it."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("xdg-data")
        patch.setenv("XDG_DATA_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def http(data_home, shared_client):  # data_home first: the app reads XDG_DATA_HOME
    return shared_client


@pytest.fixture(scope="module")
def oai(http):
    return openai.OpenAI(base_url=http.v1, api_key="unused", http_client=http, max_retries=0)


def test_create_answers_in_openai_shape_and_keeps_it_under_the_default_data_dir(oai, data_home):
    response = oai.responses.create(model="fast", input="hello there ONCE",
                                    instructions="be brief", metadata={"k": "v"})
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.incomplete_details is None
    # the echo model says back what it read: the instructions, then the input
    assert response.output_text == "be brief hello there ONCE"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "completed" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert (response.usage.input_tokens, response.usage.output_tokens,
            response.usage.total_tokens) == (5, 5, 10)
    assert response.metadata == {"k": "v"} and response.store is True
    assert response.tool_choice == "auto" and response.parallel_tool_calls is True
    assert (data_home / "llama-api" / "responses.sqlite3").is_file()


def test_max_output_tokens_makes_it_incomplete(oai):
    response = oai.responses.create(model="fast", input="a b c d e", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "a b c"
    assert response.output[0].status == "incomplete"
    assert response.usage.output_tokens == 3


def test_stream_has_the_semantic_events_and_the_sdk_accumulates_them(oai, http):
    with oai.responses.stream(model="fast", input="one two three ONCE") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    kinds = [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]  # deltas as one
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == "one two three ONCE"
    assert final.status == "completed" and final.usage.output_tokens == 4
    # the stored response is the one the stream completed with
    assert oai.responses.retrieve(final.id).output_text == deltas
    # each SSE event is named by its type, and no [DONE] follows
    reply = http.post("/v1/responses", json={"model": "fast", "input": "x y", "stream": True,
                                             "max_output_tokens": 2})
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in reply.text
    named = sse(reply.text)
    assert all(name == data["type"] for name, data in named)
    assert named[-1][0] == "response.incomplete"
    assert named[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_retrieve_list_input_items_and_delete(oai):
    created = oai.responses.create(model="fast", input=[
        {"role": "developer", "content": "d1"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "u1"},
                                                          {"type": "input_text", "text": "u2"}]},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "ONCE"},
    ])
    assert created.output_text == "d1 u1u2 a1 ONCE"
    again = oai.responses.retrieve(created.id)
    assert again.model_dump() == created.model_dump()

    items = oai.responses.input_items.list(created.id, order="asc")
    assert [item.role for item in items.data] == ["developer", "user", "assistant", "user"]
    assert items.data[1].content[1].text == "u2"
    assert items.data[2].content[0].type == "output_text"
    newest_first = oai.responses.input_items.list(created.id)
    assert [i.id for i in newest_first.data] == [i.id for i in items.data][::-1]
    page = oai.responses.input_items.list(created.id, order="asc", limit=2,
                                          after=items.data[0].id)
    assert [i.id for i in page.data] == [i.id for i in items.data[1:3]]
    assert page.has_more is True and page.first_id == items.data[1].id
    assert page.last_id == items.data[2].id

    deleted = oai.responses.delete(created.id)  # the SDK returns nothing: check the raw body
    assert deleted is None
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.delete(created.id)


def test_delete_body_and_unknown_ids_are_openai_shaped_404s(http):
    created = http.post("/v1/responses", json={"model": "fast", "input": "q"}).json()
    deleted = http.delete(f"/v1/responses/{created['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": created["id"], "object": "response", "deleted": True}
    for reply in (http.get("/v1/responses/resp_nope"),
                  http.get("/v1/responses/resp_nope/input_items"),
                  http.delete("/v1/responses/resp_nope"),
                  http.post("/v1/responses", json={"model": "fast", "input": "q",
                                                   "previous_response_id": "resp_nope"})):
        assert reply.status_code == 404, reply.text
        error = reply.json()["error"]
        assert error["message"] == "Response with id 'resp_nope' not found."
        assert error["type"] == "invalid_request_error"
    assert reply.json()["error"]["param"] == "previous_response_id"


def test_store_false_keeps_nothing(oai):
    response = oai.responses.create(model="fast", input="q", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(response.id)


@pytest.mark.parametrize(("fields", "param"), [
    ({"background": True}, "background"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
     "input[0].content[0]"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"input": [{"content": "no role"}]}, "input[0].role"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"input": []}, "input"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "web_search"}}, "tool_choice"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 2}, "top_p"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
])
def test_bad_or_unsupported_input_is_a_400_naming_the_field(http, fields, param):
    reply = http.post("/v1/responses", json={"model": "fast", "input": "q", **fields})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    if "built-in" in error["message"] or param == "background":
        assert "not supported" in error["message"]


def test_bad_listing_queries_are_400s(http):
    created = http.post("/v1/responses", json={"model": "fast", "input": "q"}).json()
    for query in ("limit=0", "limit=101", "order=sideways", "after=msg_nope"):
        reply = http.get(f"/v1/responses/{created['id']}/input_items?{query}")
        assert reply.status_code == 400, (query, reply.text)
        assert "error" in reply.json()


def test_unknown_model_is_404(http):
    reply = http.post("/v1/responses", json={"model": "nope", "input": "q"})
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"


def test_function_tools_parallel_forced_and_answered(oai):
    response = oai.responses.create(model="fast", input="CALL now", tools=[WEATHER, TIME])
    calls = response.output
    assert [c.type for c in calls] == ["function_call", "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert [c.call_id for c in calls] == ["call_0", "call_1"]
    assert [json.loads(c.arguments) for c in calls] == [{"words": 2}, {"words": 2}]
    assert response.status == "completed"
    assert [t.name for t in response.tools] == ["get_weather", "get_time"]

    single = oai.responses.create(model="fast", input="CALL now", tools=[WEATHER, TIME],
                                  parallel_tool_calls=False)
    assert [c.name for c in single.output] == ["get_weather"]
    assert single.parallel_tool_calls is False
    forced = oai.responses.create(model="fast", input="CALL", tools=[WEATHER, TIME],
                                  tool_choice={"type": "function", "name": "get_time"})
    assert [c.name for c in forced.output] == ["get_time"]

    # the client runs the tools and hands their outputs back: the next turn reads them
    answer = oai.responses.create(
        model="fast", previous_response_id=response.id, tools=[WEATHER, TIME],
        tool_choice="none", max_output_tokens=64,
        input=[{"type": "function_call_output", "call_id": "call_0", "output": "sunny"},
               {"type": "function_call_output", "call_id": "call_1", "output": "noon ONCE"}])
    assert answer.output_text == "CALL now sunny noon ONCE"
    items = oai.responses.input_items.list(answer.id, order="asc").data
    assert [(i.type, i.call_id, i.output) for i in items] == [
        ("function_call_output", "call_0", "sunny"), ("function_call_output", "call_1",
                                                      "noon ONCE")]


def test_streamed_function_calls(oai):
    with oai.responses.stream(model="fast", input="CALL", tools=[WEATHER, TIME]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    arguments = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert [e.delta for e in arguments] == ['{"words": ', "1}", '{"words": ', "1}"]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [(e.output_index, e.arguments) for e in done] == [(0, '{"words": 1}'),
                                                              (1, '{"words": 1}')]
    assert [(c.name, c.arguments) for c in final.output] == [
        ("get_weather", '{"words": 1}'), ("get_time", '{"words": 1}')]


def test_reasoning_becomes_a_reasoning_item(oai):
    response = oai.responses.create(model="fast", input="<think> hmm </think> yes ONCE")
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert reasoning.content[0].type == "reasoning_text"
    assert reasoning.content[0].text.strip() == "hmm"
    assert message.type == "message" and response.output_text.strip() == "yes ONCE"
    with oai.responses.stream(model="fast", input="<think> hmm </think> yes ONCE") as stream:
        types = [e.type for e in stream]
    assert "response.reasoning_text.delta" in types
    assert types.index("response.reasoning_text.done") < types.index(
        "response.output_text.delta")


def test_routes_are_in_the_schema(http):
    paths = http.get("/schema/openapi.json").json()["paths"]
    assert {"post"} <= set(paths["/v1/responses"])
    assert {"get", "delete"} <= set(paths["/v1/responses/{response_id}"])
    assert "get" in paths["/v1/responses/{response_id}/input_items"]


# -- state across restarts, what the backend receives, the TTL, a broken store ---------

def test_a_conversation_survives_a_restart_and_reaches_the_backend(start_app, tmp_path,
                                                                  events_file):
    data_dir = tmp_path / "data"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    with start_app(data_dir=data_dir) as http:
        oai = openai.OpenAI(base_url=http.v1, api_key="k", http_client=http, max_retries=0)
        first = oai.responses.create(model="fast", input="red ONCE", instructions="sys",
                                     temperature=0.5, top_p=0.9, max_output_tokens=20)
    with start_app(data_dir=data_dir) as http:
        oai = openai.OpenAI(base_url=http.v1, api_key="k", http_client=http, max_retries=0)
        assert oai.responses.retrieve(first.id).output_text == "sys red ONCE"
        second = oai.responses.create(
            model="fast", input="blue", previous_response_id=first.id, parallel_tool_calls=False,
            text={"format": {"type": "json_schema", "name": "s", "schema": schema}},
            tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"})
        assert second.previous_response_id == first.id
        assert second.text.format.type == "json_schema"
        third = oai.responses.create(model="fast", input="green", previous_response_id=second.id,
                                     text={"format": {"type": "json_object"}})
        assert third.status == "completed"  # "ONCE" in the history ends the echo's turn
    received = [e["request"] for e in read_events(events_file) if e["event"] == "start"]
    assert received[0]["contents"] == ["sys", "red ONCE"]
    assert (received[0]["temperature"], received[0]["top_p"], received[0]["max_tokens"]) == (
        0.5, 0.9, 20)
    # instructions belong to their own turn; the earlier turns' input and output come first
    assert received[1]["contents"] == ["red ONCE", "sys red ONCE", "blue"]
    assert received[1]["response_format"] == {"type": "json_schema", "schema": schema}
    assert received[1]["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": WEATHER["description"],
        "parameters": WEATHER["parameters"]}}]
    assert (received[1]["tool_choice"], received[1]["tool_name"]) == ("function", "get_weather")
    assert received[1]["parallel_tool_calls"] is False
    assert "parallel_tool_calls" not in received[0]  # the default, True, is left out
    assert received[2]["contents"] == [*received[1]["contents"], second.output_text, "green"]
    assert received[2]["response_format"] == {"type": "json_object"}
    with sqlite3.connect(data_dir / "responses.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT count(*) FROM responses").fetchone()[0] == 3


def test_responses_older_than_the_ttl_are_gone(start_app, tmp_path):
    data_dir = tmp_path / "data"
    with start_app(data_dir=data_dir) as http:
        kept = http.post("/v1/responses", json={"model": "fast", "input": "q"}).json()["id"]
    with sqlite3.connect(data_dir / "responses.sqlite3") as db:  # age it by an hour
        db.execute("UPDATE responses SET created_at = created_at - 3600")
    with start_app(data_dir=data_dir, responses_ttl=60) as http:
        assert http.get(f"/v1/responses/{kept}").status_code == 404
        fresh = http.post("/v1/responses", json={"model": "fast", "input": "q"}).json()["id"]
        assert http.get(f"/v1/responses/{fresh}").status_code == 200
    with sqlite3.connect(data_dir / "responses.sqlite3") as db:  # pruned when it opened
        assert [row[0] for row in db.execute("SELECT id FROM responses")] == [fresh]


def test_a_store_that_cannot_open_is_a_503_naming_the_file(start_app, tmp_path):
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the data dir should be")
    with start_app(data_dir=not_a_dir) as http:
        reply = http.post("/v1/responses", json={"model": "fast", "input": "q"})
        assert reply.status_code == 503, reply.text
        error = reply.json()["error"]
        assert str(not_a_dir / "responses.sqlite3") in error["message"]
        assert error["code"] == "store_unavailable"
        # without store the request needs no disk
        unstored = http.post("/v1/responses", json={"model": "fast", "input": "q ONCE",
                                                    "store": False})
        assert unstored.status_code == 200 and unstored.json()["output"][0]["content"][0][
            "text"] == "q ONCE"
