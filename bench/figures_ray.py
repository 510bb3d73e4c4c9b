"""Figure 11: the Ray hop. The same tiny GGUF served by two llama-api servers up at once, one
with its worker as a local child process, one with it in a Ray actor (`serve --ray`) on a
one-node cluster on this machine: one stream's decode rate and four streams' aggregate rate.
The tiny model decodes thousands of tokens a second, so the hop weighs most here.

Ray advertises the machine's network address; where the benchmark may reach loopback alone,
run it in a network namespace with only loopback up:

    unshare -n sh -c 'ip link set lo up; .venv/bin/python -m bench --figures 11'
"""

from __future__ import annotations

from bench import servers
from bench.context import Bench, aggregate_rate, rotated
from bench.models import TINY, models_dir, tiny_path
from bench.results import Figure
from bench.streams import stream

LOCAL, RAY = "llama-api, local worker", "llama-api --ray, worker in a Ray actor"
STREAMS = 4
# Tokens per answer: the tiny model decodes ~1,000 a second and deltas leave the worker
# every 25 ms, so a short answer would measure the coalescing more than the rate.
TOKENS = 1000


def ray_hop(bench: Bench) -> list[Figure]:
    from ray.cluster_utils import Cluster

    tiny = tiny_path()
    # As many cores for Ray's node as the local server budgets (the machine's).
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": bench.threads, "include_dashboard": False})
    folder = models_dir("tiny", {TINY: tiny})
    # Threads fixed alike: the thread tuner's choices (it may try 1 thread on a busy core)
    # would vary between the two more than the hop does.
    threads = ("--threads", str(bench.threads))
    compared = {LOCAL: servers.llama_api(folder, *threads, name=LOCAL),
                RAY: servers.llama_api(folder, *threads, "--ray", cluster.address, name=RAY)}
    one = Figure("ray_one_stream", "11. The Ray hop: one stream's decode rate (tiny GGUF)",
                 "tok/s", LOCAL)
    four = Figure("ray_four_streams", f"11. The Ray hop: {STREAMS} concurrent streams, "
                  "aggregate rate (tiny GGUF)", "tok/s", LOCAL)

    def one_stream(label: str):
        return stream(bench.client, compared[label].url,
                      bench.body(TINY, tokens=TOKENS, path=tiny), TOKENS)

    def concurrent(label: str):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(STREAMS) as pool:
            return list(pool.map(lambda _: one_stream(label), range(STREAMS)))

    try:
        for server in compared.values():
            bench.start(server)
        for label in compared:  # loads the model, untimed
            concurrent(label)
        for r in range(bench.rounds):
            for label in rotated(list(compared), r):
                one.add(label, one_stream(label).decode_rate)
                four.add(label, aggregate_rate(concurrent(label)))
            bench.log(f"ray hop, round {r + 1}: " + ", ".join(
                f"{label}: {one.values[label][-1]:.0f} / {four.values[label][-1]:.0f} tok/s"
                for label in compared))
    finally:
        for server in compared.values():
            server.stop()
        cluster.shutdown()
    note = (f"{TOKENS} tokens per answer; both servers up at once, rounds alternating; the "
            f"Ray node has {bench.threads} CPUs; both workers run `--threads {bench.threads}`")
    one.note = four.note = note
    bench.log(f"ray hop: one stream {one.ratio(RAY):.2f}x, {STREAMS} streams "
              f"{four.ratio(RAY):.2f}x of the local worker")
    return [one, four]
