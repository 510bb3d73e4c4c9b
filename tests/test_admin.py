"""The admin API: who may call it, what /admin/models says in each state, load, unload, pin,
and /ready. In-process (Litestar's test client) over real echo workers."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from support import chat, model_status

from llama_api.scheduling.entries import Settings
from llama_api.testing import pid_exists, wait_for

API, ADMIN = {"Authorization": "Bearer api-key"}, {"Authorization": "Bearer admin-key"}


def act(client, model: str, action: str, body=None, headers=None):
    return client.post(f"/admin/models/{model}/{action}", json=body, headers=headers or {})


def test_admin_routes_take_the_admin_key_only(start_app):
    with start_app(api_keys=["api-key"], admin_keys=["admin-key"]) as client:
        refused = client.get("/admin/models")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/admin/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        forbidden = client.get("/admin/models", headers=API)
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["code"] == "admin_key_required"
        assert client.get("/admin/models", headers=ADMIN).status_code == 200
        assert client.get("/admin/models", headers={"x-api-key": "admin-key"}).status_code == 200
        # The admin key opens the API as well; the API key still does.
        assert client.get(client.v1 + "/models", headers=ADMIN).status_code == 200
        assert client.get(client.v1 + "/models", headers=API).status_code == 200
        assert client.get(client.v1 + "/models").status_code == 401
        assert client.get("/ready").status_code == 200  # a probe needs no key


def test_without_an_admin_key_admin_routes_are_guarded_like_the_api(start_app):
    with start_app(api_keys=["api-key"]) as client:
        assert client.get("/admin/models").status_code == 401
        assert client.get("/admin/models", headers=API).status_code == 200
    with start_app() as client:  # no key at all: open, like the API
        assert client.get("/admin/models").status_code == 200


def test_models_go_from_unloaded_to_loaded_to_unloaded(client):
    listing = client.get("/admin/models").json()
    assert {m["id"]: m["state"] for m in listing["models"]} == {
        "broken": "unloaded", "fast": "unloaded", "noisy": "unloaded", "slow": "unloaded",
        "slower": "unloaded", "wide": "unloaded"}
    assert chat(client, "fast", 2).status_code == 200
    fast = model_status(client, "fast")
    assert fast["state"] == "loaded" and fast["pinned"] is False and fast["error"] is None
    assert pid_exists(fast["pid"])
    assert fast["rss_bytes"] > 1_000_000  # a Python process holds megabytes
    assert fast["gpu_memory_bytes"] is None
    assert (fast["slots"], fast["slots_in_use"], fast["queued"]) == (1, 0, 0)
    assert fast["load_seconds"] > 0
    assert abs(fast["last_used"] - time.time()) < 30
    unloaded = act(client, "fast", "unload")
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json()["state"] == "unloaded" and unloaded.json()["pid"] is None
    assert not pid_exists(fast["pid"])
    assert act(client, "fast", "unload").json()["state"] == "unloaded"  # twice is fine


def test_a_failed_load_is_failed_with_its_error_until_a_load_succeeds(client):
    assert chat(client, "broken", 2).status_code == 503
    broken = model_status(client, "broken")
    assert broken["state"] == "failed"
    assert "weights are corrupt" in broken["error"]
    reply = act(client, "broken", "load")
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "model_load_failed"


def test_a_model_is_loading_while_it_loads(client, models_dir):
    (models_dir / "heavy.echo").write_text(json.dumps({"load_delay": 3}))
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(act, client, "heavy", "load")
        # "loading" starts before the process is spawned; once spawned, its pid shows.
        assert wait_for(lambda: model_status(client, "heavy")["pid"] is not None, timeout=10)
        during = model_status(client, "heavy")
        assert during["state"] == "loading" and during["slots"] is None
        assert pid_exists(during["pid"])
        if during["progress"] is not None:  # the worker's last progress frame
            assert during["progress"]["message"] == "loading heavy"
            assert 0 <= during["progress"]["fraction"] < 1
        reply = loading.result()
    assert reply.status_code == 200, reply.text
    assert reply.json()["state"] == "loaded" and reply.json()["load_seconds"] >= 2


def test_a_pinned_model_is_not_evicted_and_a_full_server_answers_409(start_app):
    with start_app(scheduling=Settings(max_workers=1)) as client:
        pinned = act(client, "fast", "load", {"pin": True})
        assert pinned.status_code == 200, pinned.text
        assert pinned.json()["pinned"] is True and pinned.json()["state"] == "loaded"
        refused = chat(client, "slow", 2)
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "all_models_pinned" and "fast" in error["message"]
        assert act(client, "slow", "load").status_code == 409
        assert model_status(client, "fast")["state"] == "loaded"
        assert act(client, "fast", "unpin").json()["pinned"] is False
        assert chat(client, "slow", 2).status_code == 200  # now fast may be evicted
        assert model_status(client, "fast")["state"] == "unloaded"


def test_a_pinned_model_outlives_its_idle_timeout(start_app):
    with start_app(scheduling=Settings(max_workers=2, idle_timeout=0.5)) as client:
        assert act(client, "fast", "pin").json()["pinned"] is True
        assert chat(client, "fast", 2).status_code == 200  # loads on its next use, pinned
        assert chat(client, "slow", 2).status_code == 200
        assert wait_for(lambda: model_status(client, "slow")["state"] == "unloaded", timeout=10)
        time.sleep(1)  # twice fast's idle timeout, and the scheduler looks every 0.25 s
        assert model_status(client, "fast")["state"] == "loaded"
        act(client, "fast", "unpin")
        assert wait_for(lambda: model_status(client, "fast")["state"] == "unloaded", timeout=10)


def test_unloading_a_busy_model_is_refused_unless_forced(client):
    chat(client, "slow", 2)
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(chat, client, "slow", 200)  # ~10 s, unless the forced unload cuts it
        assert wait_for(lambda: model_status(client, "slow")["slots_in_use"] == 1, timeout=10)
        refused = act(client, "slow", "unload")
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "model_busy"
        # The refusal left the running request alone: still loaded, still generating.
        after = model_status(client, "slow")
        assert (after["state"], after["slots_in_use"]) == ("loaded", 1), after
        assert not busy.done()
        assert act(client, "slow", "unload", {"force": True}).json()["state"] == "unloaded"
        cut = busy.result()
    # The worker stopped the generation it was running: the answer ends early.
    assert cut.status_code != 200 or cut.json()["usage"]["completion_tokens"] < 200
    chat(client, "slow", 2)  # idle now: a plain unload is not refused
    assert act(client, "slow", "unload").json()["state"] == "unloaded"


def test_bad_admin_requests_are_clear_4xx(client):
    assert act(client, "nope", "load").status_code == 404
    assert act(client, "nope", "load").json()["error"]["code"] == "model_not_found"
    unknown_action = act(client, "fast", "reboot")
    assert unknown_action.status_code == 404 and "/unpin" in unknown_action.json()["error"]["message"]
    bad_body = act(client, "fast", "load", {"pin": "yes"})
    assert bad_body.status_code == 400 and "pin" in bad_body.json()["error"]["message"]
    assert act(client, "fast", "load", {"pinned": True}).status_code == 400


def test_ready_needs_plugins_and_a_readable_models_folder(start_app, models_dir):
    with start_app() as client:
        reply = client.get("/ready")
        assert reply.status_code == 200 and reply.json() == {"status": "ready", "problems": []}
        models_dir.rename(models_dir.with_name("elsewhere"))  # the folder went away
        reply = client.get("/ready")
        assert reply.status_code == 503
        assert reply.json()["status"] == "not ready"
        assert "missing" in reply.json()["problems"][0]
        assert client.get("/health").status_code == 200  # liveness is another question


def test_rescan_finds_new_and_removed_models_at_once(client, models_dir):
    (models_dir / "newcomer.echo").write_text("{}")
    (models_dir / "noisy.echo").unlink()
    body = client.post("/admin/rescan").json()
    assert (body["added"], body["removed"]) == (["newcomer"], ["noisy"])
    assert "newcomer" in body["models"] and "noisy" not in body["models"]
    assert client.post("/admin/rescan").json()["added"] == []  # nothing changed since
    assert chat(client, "newcomer", 2).status_code == 200
