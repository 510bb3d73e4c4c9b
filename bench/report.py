"""docs/benchmarks.md and its plots, from one run's figures."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench import packages
from bench.context import API
from bench.figures_ray import RAY
from bench.figures_service import COLD, COLD_SPARE, RAW
from bench.figures_speculative import NGRAM
from bench.results import Figure, fmt, spread

DOCS = Path(__file__).resolve().parent.parent / "docs"


def goals(figures: dict[str, Figure]) -> list[tuple[str, str, bool | None]]:
    """(goal, what was measured, met?) for each goal of issue 11 that the run measured."""
    found = []

    def check(key, goal, measure):
        if key in figures:
            value, met = measure(figures[key])
            found.append((goal, value, met))

    def ratio_at_least(label, bound):
        def measure(figure):
            ratio = figure.ratio(label)
            return (f"{fmt(ratio)}x", None if ratio is None else ratio >= bound)
        return measure

    check("one_stream_decode", "One stream: decode >= 1.0x llama-server", ratio_at_least(API, 1.0))

    def ttft(figure):
        ratio = figure.ratio(API)
        return f"{fmt(ratio)}x", None if ratio is None else ratio <= 1.1
    check("one_stream_ttft", "One stream: TTFT <= 1.1x llama-server's", ttft)
    check("concurrent_4", "Four streams: aggregate >= 1.0x llama-server -np 4",
          ratio_at_least(API, 1.0))
    check("contention", "Contention: >= 5x llama-server's rate (its default threads)",
          ratio_at_least(API, 5.0))

    def pair(figure):
        # "One model alone on both cores": llama-cpp-python in process with every core. (A
        # lone stream on a `--max-workers 2` server may hold only its share of the cores.)
        value = figure.median("sum of the pair over each alone in process")
        return f"{fmt(value)}x", value >= 0.9
    check("two_models_sum", "Two models at once: sum >= 0.9x of one alone", pair)

    def cold(figure):
        def extra(label):
            return statistics.median(c - r for c, r in zip(figure.values[label],
                                                           figure.values[RAW]))
        spare, plain = extra(COLD_SPARE), extra(COLD)
        return f"raw load + {spare:.2f} s with --spare-worker ({plain:.2f} s without)", spare <= 0.3
    check("cold_start", "Cold start: TTFT <= raw load + 0.3 s", cold)
    check("overhead_rate", "Per-request overhead: rate >= llama-server's", ratio_at_least(API, 1.0))
    for size in (512, 2048, 4096, 8000):
        check(f"prefill_{size}", f"Prompt processing, ~{size} tokens: >= 1.0x llama-server",
              ratio_at_least(API, 1.0))
    check("speculative", "Speculative (n-gram), repeating a given text: >= 1.3x tokens/s",
          ratio_at_least(NGRAM, 1.3))
    check("ray_one_stream", "The Ray hop, one stream (tiny GGUF): >= 0.95x the local worker",
          ratio_at_least(RAY, 0.95))
    check("ray_four_streams", "The Ray hop, four streams (tiny GGUF): >= 0.95x the local worker",
          ratio_at_least(RAY, 0.95))
    return found


def table(figure: Figure) -> str:
    reference = figure.reference
    head = f"| | median ({figure.unit}) | spread (min-max) | rounds |"
    rule = "| --- | --- | --- | --- |"
    if reference:
        head += f" ratio to {reference} (median, spread) |"
        rule += " --- |"
    lines = [f"### {figure.title}", ""]
    if figure.note:
        lines += [f"{figure.note}.", ""]
    lines += [head, rule]
    for label, values in figure.values.items():
        row = f"| {label} | {fmt(statistics.median(values))} | {spread(values)} | {len(values)} |"
        if reference:
            ratios = figure.ratios(label)
            if label == reference:
                row += " reference |"
            elif ratios:
                row += f" {fmt(statistics.median(ratios))}x ({spread(ratios)}) |"
            else:
                row += " - |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def plots(figures: dict[str, Figure], levels: list[int], folder: Path) -> list[str]:
    """PNG files in `folder`; returns their names (none without matplotlib)."""
    if packages.ensure({"matplotlib": "matplotlib"}) is not None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        written.append(name)

    concurrent = [figures.get(f"concurrent_{n}") for n in levels]
    if all(concurrent):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label in concurrent[0].values:
            medians = [f.median(label) for f in concurrent]
            lows = [m - min(f.values[label]) for m, f in zip(medians, concurrent)]
            highs = [max(f.values[label]) - m for m, f in zip(medians, concurrent)]
            ax.errorbar(levels, medians, yerr=[lows, highs], marker="o", capsize=3, label=label)
        ax.set(xlabel="concurrent streams", ylabel="aggregate tok/s", xticks=levels,
               title="Aggregate decode rate by concurrency (SmolLM2-135M)")
        ax.legend()
        save(fig, "bench-concurrency.png")
    if "contention" in figures and "one_stream_decode" in figures:
        idle, busy = figures["one_stream_decode"], figures["contention"]
        labels = [label for label in busy.values if label in idle.values]
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], [idle.median(lab) for lab in labels], 0.4, label="no busy loop")
        ax.bar([x + 0.2 for x in xs], [busy.median(lab) for lab in labels], 0.4,
               label="one core kept busy")
        ax.set_xticks(list(xs), [lab.replace(" llama-cpp-python", "\nllama-cpp-python") for lab in labels])
        ax.set(ylabel="decode tok/s", title="One stream, with and without a busy core")
        ax.legend()
        save(fig, "bench-contention.png")
    if "cold_start" in figures:
        figure = figures["cold_start"]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        labels = list(figure.values)
        ax.barh(labels, [figure.median(lab) for lab in labels])
        ax.set(xlabel="seconds (median)", title="Cold start (SmolLM2-135M)")
        save(fig, "bench-cold-start.png")
    return written


def write(figures: dict[str, Figure], levels: list[int], rounds: int, header: dict,
          commands: dict[str, str], skipped: dict[str, str], path: Path | None = None) -> Path:
    path = path or DOCS / "benchmarks.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    images = plots(figures, levels, path.parent)
    lines = ["# Benchmarks", "",
             ("Written by `make bench` (`python -m bench`); do not edit by hand. Every figure is "
             "measured in one run, with the compared servers up at once and rounds alternating "
             "(each round starts with a different server); a ratio is taken round by round "
             "against the reference measured in the same round. Figures from different runs or "
             "machines do not compare."), "",
             "## Machine and versions", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += ["", "## Goals (issue 11)", ""]
    if rounds < 5:
        lines += [(f"**A smoke run ({rounds} round(s)): these figures test the suite, they measure "
                  "nothing.** The issue asks for the median of at least 5 rounds."), ""]
    lines += ["| goal | measured | met |", "| --- | --- | --- |"]
    for goal, value, met in goals(figures):
        lines.append(f"| {goal} | {value} | {'yes' if met else 'no' if met is not None else '-'} |")
    if skipped:
        lines += ["", "Left out of this run:", ""]
        lines += [f"- {what}: {why}" for what, why in skipped.items()]
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in images]
    lines += ["", "## Figures", "",
              ("Every request: a completion of the same ChatML prompt, greedy, every "
              "end-of-generation token biased by -100 (and `ignore_eos`), so each answer has "
              "exactly the asked tokens; the suite checks each count against the server's usage "
              "or timings (llama-cpp-python's server reports none in a stream: its text chunks "
              "are counted, one per token). Decode rate: (tokens - 1) / (last token's arrival - "
              "first token's arrival)."), ""]
    lines += [table(figure) for figure in figures.values()]
    lines += ["## Commands", "", "```"]
    lines += [f"# {name}\n{command}" for name, command in commands.items()]
    lines += ["```", ""]
    path.write_text("\n".join(lines))
    return path
