"""A real Ray cluster of three nodes on this machine (a head and nodes `a` and `b`, each
with resources of its own), shared by a test module, and a real server placing its echo
workers there (`serve --ray`).

Ray advertises the machine's network address and connects through it; tests here may reach
loopback alone. So these tests run inside a network namespace that has only loopback:
tests/test_ray_cluster.py runs this folder with `unshare -n` (LLAMA_API_TEST_NETNS=1), and
outside one nothing here is collected."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

IN_NAMESPACE = os.environ.get("LLAMA_API_TEST_NETNS") == "1"
collect_ignore_glob = [] if IN_NAMESPACE else ["test_*.py"]

# The nodes besides the head: name -> custom resources. `pool` is room for two workers.
NODES = {"a": {"node_a": 1, "pool": 2}, "b": {"node_b": 1, "pool": 2}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The cluster; `.nodes` maps a, b to Ray's node objects (`.node_id`), `.events` is the
    file the echo workers on every node record their events in."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    events = tmp_path_factory.mktemp("cluster") / "events.jsonl"
    # What the nodes' processes inherit: the echo plugin alone, and where to record.
    saved = {name: os.environ.get(name) for name in ("LLAMA_API_PLUGINS", "LLAMA_API_ECHO_EVENTS")}
    os.environ.update(LLAMA_API_PLUGINS="echo", LLAMA_API_ECHO_EVENTS=str(events))
    made = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False})
    try:
        nodes = {name: made.add_node(num_cpus=1, resources=resources)
                 for name, resources in NODES.items()}
        made.wait_for_nodes()
        ray.init(address=made.address, log_to_driver=False)
        yield SimpleNamespace(address=made.address, nodes=nodes, events=events, cluster=made)
    finally:
        ray.shutdown()
        made.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

