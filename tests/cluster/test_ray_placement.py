"""One `serve --ray` endpoint over a real three-node Ray cluster (conftest.py): models land on
the nodes their resources ask for, requests of every kind work through the worker's actor,
eviction stays on the node that needs room, a model no node can take is a 503 naming why,
and losing a node costs only the requests that ran there.

The models are echo models (their answers are known); the node-loss test comes last, as it
takes a node out of the module's cluster."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import ray
from support import chat, echo_server, model_status, read_events, sse, write_echo_models

MODELS_TOML = """
[models.on-a]
backend = "echo"
path = "{folder}/slow.echo"
resources = {{node_a = 1}}

[models.also-a]
backend = "echo"
path = "{folder}/slow.echo"
resources = {{node_a = 1}}

[models.on-b]
backend = "echo"
path = "{folder}/slow.echo"
resources = {{node_b = 1}}

[models.roaming]
backend = "echo"
path = "{folder}/slow.echo"
resources = {{pool = 1}}

[models.spread]
backend = "echo"
path = "{folder}/slow.echo"
resources = {{pool = 1}}
replicas = 2

[models.pinned-to-b]
backend = "echo"
path = "{folder}/slow.echo"
node = "{node_b}"

[models.needs-a-tpu]
backend = "echo"
path = "{folder}/slow.echo"
resources = {{tpu = 1}}

[models.on-no-node]
backend = "no-such-plugin"
path = "{folder}/slow.echo"
"""


@pytest.fixture(scope="module")
def server(cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-models")
    write_echo_models(folder, {"slow": {"delay": 0.02}})
    (folder / "models.toml").write_text(MODELS_TOML.format(
        folder=folder, node_b=cluster.nodes["b"].node_id))
    with echo_server(folder / "none", "--ray", cluster.address, "--config",
                     str(folder / "models.toml"), "--max-workers", "2") as running:
        yield running


def label_of(node) -> str:
    """How the server names a node: `name/id6` (the name is 127.0.0.1 for all of them here)."""
    return f"127.0.0.1/{node.node_id[:6]}"


def node_of(server, model: str) -> str:
    return model_status(server, model)["node"]


def stream_chat(server, model: str, max_tokens: int, stop_after: int | None = None):
    """A streamed chat: (the events read, whether the stream ended with [DONE]); with
    `stop_after`, the client leaves after that many events."""
    body = {"model": model, "messages": [{"role": "user", "content": "tick tock"}],
            "max_tokens": max_tokens, "stream": True}
    events, done, text = [], False, ""
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                      timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            text += line + "\n"
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                events.append(line)
                if stop_after is not None and len(events) >= stop_after:
                    break
    return sse(text), done


def test_models_land_on_the_nodes_their_resources_ask_for(server, cluster):
    for model in ("on-a", "on-b"):
        answer = chat(server, model, max_tokens=4)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "tick tock tick tock"
    assert node_of(server, "on-a") == label_of(cluster.nodes["a"])
    assert node_of(server, "on-b") == label_of(cluster.nodes["b"])
    # `node = "<id>"` pins a model to that node.
    assert chat(server, "pinned-to-b", max_tokens=2).status_code == 200
    assert node_of(server, "pinned-to-b") == label_of(cluster.nodes["b"])
    # Each worker runs in an actor named after its model, in the server's namespace.
    names = ray.util.list_named_actors(all_namespaces=True)
    assert any(entry["name"].startswith("llama-api/on-a/") and entry["namespace"] == "llama-api"
               for entry in names), names
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert f'llama_api_model_node{{model="on-a",node="{label_of(cluster.nodes["a"])}"}} 1.0' in metrics


def test_a_stream_embeddings_and_tokens_work_through_the_actor(server):
    plain = chat(server, "on-b", max_tokens=6).json()["choices"][0]["message"]["content"]
    events, done = stream_chat(server, "on-b", max_tokens=6)
    streamed = "".join(data["choices"][0]["delta"].get("content") or ""
                       for _, data in events if data.get("choices"))
    assert done and streamed == plain
    embedded = httpx.post(server.url + "/v1/embeddings", timeout=30,
                          json={"model": "on-b", "input": ["tick", "tock tock"]})
    assert embedded.status_code == 200, embedded.text
    vectors = [item["embedding"] for item in embedded.json()["data"]]
    assert len(vectors) == 2 and vectors[0] != vectors[1]
    tokens = httpx.post(server.url + "/tokenize", timeout=30,
                        json={"model": "on-b", "content": "tick tock tick"})
    assert tokens.status_code == 200, tokens.text
    ids = tokens.json()["tokens"]
    assert len(ids) == 3 and ids[0] == ids[2] != ids[1]


def test_a_client_that_leaves_cancels_the_generation_on_the_node(server, cluster):
    before = len(read_events(cluster.events))
    events, done = stream_chat(server, "on-a", max_tokens=400, stop_after=3)
    assert not done and len(events) == 3
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        cancelled = [e for e in read_events(cluster.events)[before:]
                     if e["event"] == "cancelled" and e["model"] == "on-a"]
        if cancelled:
            break
        time.sleep(0.1)
    assert cancelled, read_events(cluster.events)[before:]
    assert cancelled[0]["produced"] < 100  # 400 tokens take 8 s; it stopped well before


def test_a_model_that_needs_room_evicts_only_on_its_node(server, cluster):
    for model in ("on-a", "on-b"):
        assert chat(server, model, max_tokens=2).status_code == 200
    on_b_pid = model_status(server, "on-b")["pid"]
    # also-a needs node_a, which on-a holds: on-a goes, on-b (idle too, and older) stays.
    answer = chat(server, "also-a", max_tokens=2)
    assert answer.status_code == 200, answer.text
    assert node_of(server, "also-a") == label_of(cluster.nodes["a"])
    assert model_status(server, "on-a")["state"] == "unloaded"
    on_b = model_status(server, "on-b")
    assert on_b["state"] == "loaded" and on_b["pid"] == on_b_pid


@pytest.mark.parametrize(("model", "named"), [
    ("needs-a-tpu", "resources"), ("on-no-node", "'no-such-plugin' plugin")])
def test_a_model_no_node_can_take_is_a_503_that_says_why(server, model, named):
    answer = chat(server, model, max_tokens=2)
    assert answer.status_code == 503, answer.text
    message = answer.json()["error"]["message"]
    assert named in message and model in message


def test_two_replicas_on_two_nodes_share_four_streams(server, cluster):
    results = []

    def run() -> None:
        results.append(stream_chat(server, "spread", max_tokens=60))

    streams = [threading.Thread(target=run) for _ in range(4)]
    for thread in streams:
        thread.start()
    for thread in streams:
        thread.join(60)
    assert len(results) == 4 and all(done for _, done in results)
    for events, _ in results:
        words = sum(len((data["choices"][0]["delta"].get("content") or "").split())
                    for _, data in events if data.get("choices"))
        assert words == 60
    replicas = model_status(server, "spread")["replicas"]
    assert [replica["id"] for replica in replicas] == ["spread", "spread#2"]
    assert all(replica["state"] == "loaded" for replica in replicas), replicas
    assert {replica["node"] for replica in replicas} == {
        label_of(cluster.nodes["a"]), label_of(cluster.nodes["b"])}
    # Each started the generations it was given: the four streams were shared.
    started = [e["model"] for e in read_events(cluster.events) if e["event"] == "start"
               and e["model"] in ("spread", "spread#2")]
    assert sorted(set(started)) == ["spread", "spread#2"] and len(started) == 4


def test_memory_limits_apply_per_node_and_evict_only_there(cluster, tmp_path):
    # Each model's estimate is its file's size plus a bare worker (~74 MiB here), against
    # --max-memory 100M per node: one fits on a node, two on two nodes.
    nodes = {"big1": "a", "big2": "a", "big3": "b"}
    for name in nodes:
        (tmp_path / f"{name}.echo").write_text("{}" + " " * (50 << 20))
    (tmp_path / "models.toml").write_text("".join(
        f'[models.{name}]\nbackend = "echo"\npath = "{tmp_path}/{name}.echo"\n'
        f'node = "{cluster.nodes[node].node_id}"\n' for name, node in nodes.items()))
    with echo_server(tmp_path / "none", "--ray", cluster.address, "--config",
                     str(tmp_path / "models.toml"), "--max-workers", "2",
                     "--max-memory", "100M") as roomy:
        for name in ("big3", "big1"):  # 148 MiB in all, but 74 on each node
            answer = chat(roomy, name, max_tokens=2)
            assert answer.status_code == 200, answer.text
            assert model_status(roomy, name)["state"] == "loaded"
        big3_pid = model_status(roomy, "big3")["pid"]
        assert chat(roomy, "big2", max_tokens=2).status_code == 200  # node a: big1 goes
        assert model_status(roomy, "big1")["state"] == "unloaded"
        assert node_of(roomy, "big2") == label_of(cluster.nodes["a"])
        big3 = model_status(roomy, "big3")
        assert big3["state"] == "loaded" and big3["pid"] == big3_pid


def test_ray_auto_joins_the_cluster_ray_address_names(cluster, tmp_path):
    write_echo_models(tmp_path, {"slow": {"delay": 0.02}})
    (tmp_path / "models.toml").write_text(
        f'[models.found]\nbackend = "echo"\npath = "{tmp_path}/slow.echo"\n')
    with echo_server(tmp_path / "none", "--ray", "auto", "--config", str(tmp_path / "models.toml"),
                     env={"RAY_ADDRESS": cluster.address}) as found:
        answer = chat(found, "found", max_tokens=2)
        assert answer.status_code == 200, answer.text
        nodes = [cluster.cluster.head_node, *cluster.nodes.values()]
        assert node_of(found, "found") in [label_of(node) for node in nodes]


def test_a_killed_server_leaves_no_worker_actor_behind(cluster, tmp_path):
    write_echo_models(tmp_path, {"slow": {"delay": 0.02}})
    (tmp_path / "models.toml").write_text(
        f'[models.doomed]\nbackend = "echo"\npath = "{tmp_path}/slow.echo"\n')
    with echo_server(tmp_path / "none", "--ray", cluster.address, "--config",
                     str(tmp_path / "models.toml")) as doomed:
        assert chat(doomed, "doomed", max_tokens=2).status_code == 200
        worker_pid = model_status(doomed, "doomed")["pid"]
        os.kill(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait(10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (actors_named("doomed") or alive(worker_pid)):
        time.sleep(0.2)
    assert not actors_named("doomed") and not alive(worker_pid)


def actors_named(model: str) -> list:
    return [entry for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry["name"].startswith(f"llama-api/{model}/")]


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_losing_a_node_fails_only_its_requests_and_its_model_comes_back_elsewhere(
        server, cluster):
    assert chat(server, "roaming", max_tokens=2).status_code == 200
    lost = next(name for name, node in cluster.nodes.items()
                if label_of(node) == node_of(server, "roaming"))
    kept = "b" if lost == "a" else "a"
    survivor = "on-b" if kept == "b" else "also-a"
    assert chat(server, survivor, max_tokens=2).status_code == 200
    assert node_of(server, survivor) == label_of(cluster.nodes[kept])

    results = {}

    def run(model: str) -> None:
        results[model] = stream_chat(server, model, max_tokens=150)

    streams = [threading.Thread(target=run, args=(model,)) for model in ("roaming", survivor)]
    for thread in streams:
        thread.start()
    time.sleep(1.0)  # both streams are running (150 tokens take 3 s)
    cluster.cluster.remove_node(cluster.nodes[lost])
    for thread in streams:
        thread.join(60)

    events, done = results["roaming"]
    assert not done and "error" in events[-1][1], events[-3:]
    assert events[-1][1]["error"]["code"] in ("worker_crashed", "worker_timeout")
    events, done = results[survivor]
    assert done
    assert sum(len((data["choices"][0]["delta"].get("content") or "").split())
               for _, data in events if data.get("choices")) == 150

    again = chat(server, "roaming", max_tokens=3)
    assert again.status_code == 200, again.text
    assert node_of(server, "roaming") == label_of(cluster.nodes[kept])
