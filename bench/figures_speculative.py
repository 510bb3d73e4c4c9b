"""Figure 9: n-gram (prompt lookup) speculative decoding on a prompt that asks to repeat a
given text, against the same model decoding plainly, on one llama-api server."""

from __future__ import annotations

from bench import servers
from bench.context import Bench, rotated
from bench.models import CACHE, models_dir, smollm2_path
from bench.results import Figure
from bench.streams import completion_body, request, stream

PLAIN, NGRAM = "smollm2-plain", "smollm2-ngram"
PARAGRAPH = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk. He trimmed "
    "the wick, polished the great lens, and wrote the weather in a leather book: wind from "
    "the west, a light swell, fog expected before midnight. Ships passed far out on the dark "
    "water, and each one answered his beam with a short blast of its horn."
)
PROMPT = ("<|im_start|>user\nRepeat the following text exactly, word for word:\n\n"
          f"{PARAGRAPH}<|im_end|>\n<|im_start|>assistant\n")


def config() -> str:
    """models.toml: SmolLM2 twice, plain and with `speculative = "ngram"`."""
    path = CACHE / "speculative.toml"
    entries = []
    for model_id, extra in ((PLAIN, ""), (NGRAM, 'speculative = "ngram"\n')):
        entries.append(f'[models.{model_id}]\nbackend = "llamacpp"\npath = "{smollm2_path()}"\n'
                       f"[models.{model_id}.options]\nthreads = \"auto\"\n{extra}")
    path.write_text("\n".join(entries))
    return str(path)


def speculative(bench: Bench) -> list[Figure]:
    figure = Figure("speculative", "9. Speculative decoding (n-gram) on a repeat-the-text "
                    "prompt: decode rate", "tok/s", PLAIN)
    server = servers.llama_api(models_dir("speculative", {}), "--config", config(),
                               "--max-workers", "2", name="llama-api (speculative)")
    bench.start(server)

    def body(model, **more):
        # The answer ends where the model ends it (at most 2x the run's tokens): past the
        # repeated text there is nothing to look up, and the figure is about the repeat.
        return {**completion_body(model, 2 * bench.tokens, (), **more), "prompt": PROMPT,
                "ignore_eos": False}

    counts: set[int] = set()
    try:
        for model in (PLAIN, NGRAM):  # load both, untimed
            stream(bench.client, server.url, body(model), None)
        for r in range(bench.rounds):
            for model in rotated([PLAIN, NGRAM], r):
                answer = stream(bench.client, server.url, body(model), None)
                counts.add(answer.tokens)
                figure.add(model, answer.decode_rate)
        texts = []
        for model in (PLAIN, NGRAM):
            texts.append(request(bench.client, server.url + "/v1/completions",
                                 body(model, stream=False))["choices"][0]["text"])
    finally:
        server.stop()
    same = "the same" if texts[0] == texts[1] else "not the same (a near tie flipped)"
    figure.note = ("one llama-api server (`--max-workers 2`) with SmolLM2 twice, plainly and "
                   "with `speculative = \"ngram\"`; greedy, each answer ending where the model "
                   f"ends it ({'/'.join(map(str, sorted(counts)))} tokens); the two greedy "
                   f"answers are {same}")
    bench.log(f"speculative: {figure.ratio(NGRAM):.2f}x of plain decoding")
    return [figure]
