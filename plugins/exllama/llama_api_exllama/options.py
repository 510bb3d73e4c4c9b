"""Load options (`ModelSpec.options`): parsed and checked before any GPU work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llama_api import errors
from llama_api_exllama.discovery import EXLLAMAV2, EXLLAMAV3

PAGE_SIZE = 256  # both libraries allocate the cache in pages of 256 tokens
DEFAULT_MAX_SEQ_LEN = 8192  # when the model allows more, ask for it with max_seq_len
DEFAULT_BATCH_SIZE = 8

CACHE_TYPES = {
    EXLLAMAV2: ("fp16", "q8", "q6", "q4"),
    EXLLAMAV3: ("fp16",) + tuple(f"q{bits}" for bits in range(2, 9)),
}

KNOWN = {
    "max_seq_len": "context length per request (default: the model's, at most 8192)",
    "cache_size": "tokens in the shared K/V cache (default: max_seq_len), rounded up to 256",
    "cache_type": "fp16, q8, q6 or q4 (exllamav3: fp16 or q2..q8)",
    "gpu_split": 'GB of weights per GPU, e.g. [20, 24] or "20,24"; "auto" for auto-split',
    "autosplit": "split across all GPUs automatically (default when gpu_split is not given)",
    "reserve_vram": "GB to leave free per GPU when auto-splitting, a number or a list",
    "rope_scale": "linear RoPE scaling factor (exllamav2)",
    "rope_alpha": "NTK RoPE alpha (exllamav2)",
    "max_batch_size": "requests generated at once (the model's slots)",
    "slots": "same as max_batch_size",
    "max_chunk_size": "prompt tokens per prefill step",
    "chat_template": "a Jinja chat template, or the path of a file holding one",
    "warmup": "run a short generation after loading (default true)",
}


@dataclass
class LoadOptions:
    max_seq_len: int
    cache_size: int
    cache_type: str = "fp16"
    gpu_split: list[float] | None = None
    reserve_vram: list[float] | None = None
    rope_scale: float | None = None
    rope_alpha: float | None = None
    max_batch_size: int = DEFAULT_BATCH_SIZE
    max_chunk_size: int | None = None
    chat_template: str | None = None
    warmup: bool = True

    @property
    def autosplit(self) -> bool:
        return self.gpu_split is None


def _fail(name: str, message: str) -> errors.ModelLoadError:
    return errors.ModelLoadError(f"option {name}: {message}", param=name)


def _int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str, float)):
        raise _fail(name, f"expected an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise _fail(name, f"expected an integer, got {value!r}") from None
    if number != float(value) or number < minimum:
        raise _fail(name, f"expected an integer >= {minimum}, got {value!r}")
    return number


def _float(name: str, value: Any, minimum: float = 0.0) -> float:
    if isinstance(value, bool):
        raise _fail(name, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(name, f"expected a number, got {value!r}") from None
    if not number > minimum:
        raise _fail(name, f"expected a number > {minimum}, got {value!r}")
    return number


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return value.lower() in ("1", "true", "yes", "on")
    raise _fail(name, f"expected true or false, got {value!r}")


def _floats(name: str, value: Any) -> list[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        value = [part for part in value.replace(" ", "").split(",") if part]
    if not isinstance(value, (list, tuple)) or not value:
        raise _fail(name, f"expected a list of GB per GPU, got {value!r}")
    numbers = []
    for item in value:
        if isinstance(item, bool):
            raise _fail(name, f"expected a list of GB per GPU, got {value!r}")
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise _fail(name, f"expected a list of GB per GPU, got {value!r}") from None
        if number < 0:
            raise _fail(name, f"GB per GPU can't be negative, got {value!r}")
        numbers.append(number)
    return numbers


def round_up(value: int, multiple: int = PAGE_SIZE) -> int:
    return -(-value // multiple) * multiple


def parse_options(
    options: dict[str, Any] | None,
    backend: str,
    model_max_seq_len: int | None = None,
    slots: int | None = None,
) -> LoadOptions:
    """Check `options` against what `backend` supports; raise ModelLoadError naming the option."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(KNOWN))
    if unknown:
        known = ", ".join(sorted(KNOWN))
        raise errors.ModelLoadError(
            f"unknown exllama option(s) {', '.join(unknown)}; known options: {known}",
            param=unknown[0],
        )

    if options.get("max_seq_len") is not None:
        max_seq_len = _int("max_seq_len", options["max_seq_len"], minimum=16)
    else:
        max_seq_len = min(model_max_seq_len or DEFAULT_MAX_SEQ_LEN, DEFAULT_MAX_SEQ_LEN)

    if options.get("cache_size") is not None:
        cache_size = _int("cache_size", options["cache_size"], minimum=16)
        if cache_size < max_seq_len:
            raise _fail(
                "cache_size",
                f"{cache_size} is smaller than max_seq_len ({max_seq_len}): "
                "one full-length request must fit in the cache",
            )
    else:
        cache_size = max_seq_len
    cache_size = round_up(cache_size)

    cache_type = str(options.get("cache_type") or "fp16").lower()
    if cache_type in ("fp16", "16", "f16", "half"):
        cache_type = "fp16"
    if cache_type not in CACHE_TYPES[backend]:
        raise _fail(
            "cache_type",
            f"{backend} supports {', '.join(CACHE_TYPES[backend])}, got {cache_type!r}",
        )

    gpu_split = None
    split = options.get("gpu_split")
    autosplit = options.get("autosplit")
    if autosplit is not None:
        autosplit = _bool("autosplit", autosplit)
    if split is not None and not (isinstance(split, str) and split.strip().lower() == "auto"):
        if autosplit:
            raise _fail("gpu_split", "give either gpu_split or autosplit, not both")
        gpu_split = _floats("gpu_split", split)
        if not any(gpu_split):
            raise _fail("gpu_split", "at least one GPU needs more than 0 GB")
    elif autosplit is False:
        raise _fail("autosplit", "autosplit false needs a gpu_split (GB per GPU)")

    reserve = options.get("reserve_vram")
    reserve_vram = _floats("reserve_vram", reserve) if reserve is not None else None
    if reserve_vram is not None and gpu_split is not None:
        raise _fail(
            "reserve_vram", "applies to auto-split only; with gpu_split, lower the GB per GPU"
        )

    rope_scale = rope_alpha = None
    if options.get("rope_scale") is not None:
        rope_scale = _float("rope_scale", options["rope_scale"])
    if options.get("rope_alpha") is not None:
        rope_alpha = _float("rope_alpha", options["rope_alpha"])
    if backend == EXLLAMAV3 and (rope_scale is not None or rope_alpha is not None):
        name = "rope_scale" if rope_scale is not None else "rope_alpha"
        raise _fail(
            name,
            "exllamav3 reads RoPE scaling from the model's config.json; "
            "this override is an exllamav2 option",
        )

    batch = options.get("max_batch_size", options.get("slots"))
    if (
        "max_batch_size" in options
        and "slots" in options
        and options["slots"] != options["max_batch_size"]
    ):
        raise _fail("slots", "max_batch_size and slots disagree; give one")
    if batch is not None:
        max_batch_size = _int("max_batch_size", batch)
    elif slots:
        max_batch_size = _int("slots", slots)
    else:
        max_batch_size = DEFAULT_BATCH_SIZE

    max_chunk_size = None
    if options.get("max_chunk_size") is not None:
        max_chunk_size = round_up(_int("max_chunk_size", options["max_chunk_size"]))

    chat_template = options.get("chat_template")
    if chat_template is not None and (
        not isinstance(chat_template, str) or not chat_template.strip()
    ):
        raise _fail("chat_template", "expected a template string or a file path")

    warmup = _bool("warmup", options["warmup"]) if options.get("warmup") is not None else True

    return LoadOptions(
        max_seq_len=max_seq_len,
        cache_size=cache_size,
        cache_type=cache_type,
        gpu_split=gpu_split,
        reserve_vram=reserve_vram,
        rope_scale=rope_scale,
        rope_alpha=rope_alpha,
        max_batch_size=max_batch_size,
        max_chunk_size=max_chunk_size,
        chat_template=chat_template,
        warmup=warmup,
    )
