"""Stored responses belong to the API key that stored them: any other key gets the 404 of an
id that does not exist, on every Responses route and as `previous_response_id`."""

from __future__ import annotations

import json
import sqlite3

import anyio
import pytest

from llama_api.api.responses_store import FILE_NAME, ResponsesStore

KEYS = ["k1-secret", "k2-secret"]


def call(client, method: str, path: str, key: str, body: dict | None = None):
    return client.request(method, client.v1 + path, json=body,
                          headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def keyed(start_app, tmp_path):
    with start_app(api_keys=KEYS, admin_keys=["admin-secret"],
                   data_dir=tmp_path / "data") as client:
        yield client


def assert_not_found(response, response_id: str, param: str | None = None):
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert response_id in error["message"] and error["param"] == param


def test_another_key_gets_404_on_every_route_as_for_an_unknown_id(keyed):
    created = call(keyed, "POST", "/responses", "k1-secret",
                   {"model": "fast", "input": "mine alone"})
    assert created.status_code == 200, created.text
    rid = created.json()["id"]

    # The owner reads it; the other key, and the admin key, get what a missing id gets.
    assert call(keyed, "GET", f"/responses/{rid}", "k1-secret").status_code == 200
    for key in ("k2-secret", "admin-secret"):
        assert_not_found(call(keyed, "GET", f"/responses/{rid}", key), rid)
        assert_not_found(call(keyed, "GET", f"/responses/{rid}/input_items", key), rid)
        continued = call(keyed, "POST", "/responses", key,
                         {"model": "fast", "input": "go on", "previous_response_id": rid})
        assert_not_found(continued, rid, "previous_response_id")
        assert_not_found(call(keyed, "DELETE", f"/responses/{rid}", key), rid)
    other = call(keyed, "GET", f"/responses/{rid}", "k2-secret").json()["error"]
    unknown = call(keyed, "GET", "/responses/resp_nope", "k2-secret").json()["error"]
    assert other == {**unknown, "message": unknown["message"].replace("resp_nope", rid)}

    # Nothing the other keys tried touched it: the owner continues and deletes it.
    continued = call(keyed, "POST", "/responses", "k1-secret",
                     {"model": "fast", "input": "go on", "previous_response_id": rid})
    assert continued.status_code == 200, continued.text
    assert call(keyed, "DELETE", f"/responses/{rid}", "k1-secret").status_code == 200


def test_a_streamed_response_is_stored_as_its_keys(keyed):
    with keyed.stream("POST", keyed.v1 + "/responses",
                      json={"model": "fast", "input": "streamed ONCE", "stream": True},
                      headers={"Authorization": "Bearer k2-secret"}) as stream:
        events = [json.loads(line.removeprefix("data: ")) for line in stream.iter_lines()
                  if line.startswith("data: ")]
    (completed,) = [e for e in events if e["type"] == "response.completed"]
    rid = completed["response"]["id"]
    assert call(keyed, "GET", f"/responses/{rid}", "k2-secret").status_code == 200
    assert_not_found(call(keyed, "GET", f"/responses/{rid}", "k1-secret"), rid)


def test_the_file_holds_a_keyed_hash_of_the_owner_never_the_key(tmp_path):
    store = ResponsesStore(tmp_path)
    response = {"id": "r1", "created_at": 1e10, "previous_response_id": None, "output": []}
    store.put_blocking(response, [], b"k1-secret")
    assert anyio.run(store.get, "r1", b"k1-secret")["id"] == "r1"
    store.close()
    raw = (tmp_path / FILE_NAME).read_bytes()
    assert b"k1-secret" not in raw
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        (owner,) = db.execute("SELECT owner FROM responses").fetchone()
    assert owner and len(owner) == 64  # an HMAC-SHA256, hex
    # A store opened again keeps the secret, so the owner still reads it.
    again = ResponsesStore(tmp_path)
    assert anyio.run(again.get, "r1", b"k1-secret")["id"] == "r1"
    again.close()


def test_a_file_from_before_owners_gets_the_column_and_its_rows_stay_keyless(tmp_path):
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        db.execute("CREATE TABLE responses (id TEXT PRIMARY KEY, created_at REAL NOT NULL, "
                   "previous_id TEXT, input_items TEXT NOT NULL, response TEXT NOT NULL)")
        db.execute("INSERT INTO responses VALUES ('old', 1e10, NULL, '[]', "
                   "'{\"id\": \"old\", \"output\": []}')")
    store = ResponsesStore(tmp_path)
    assert anyio.run(store.get, "old", None)["id"] == "old"  # a server with no keys: as before
    with pytest.raises(Exception) as raised:
        anyio.run(store.get, "old", b"k1-secret")
    assert getattr(raised.value, "status", None) == 404
    store.close()
