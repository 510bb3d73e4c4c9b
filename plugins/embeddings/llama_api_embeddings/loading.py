"""The setup both transformers models (encoders and cross-encoders) share when they load:
the local folder, the offline switches, the thread budget, the tokenizer and its chat
template, the input length limit, and the batcher. Imported only in the worker.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from llama_api import errors
from llama_api.text.chat_template import ChatTemplate
from llama_api_embeddings.batching import Batcher
from llama_api_embeddings.common import as_bool, option

log = logging.getLogger(__name__)

# Their position ids start after the padding index: two positions fewer to read.
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert"}
UNSET_LENGTH = 1_000_000  # transformers' "unset" model_max_length is larger than this


def allow_download(spec) -> bool:
    return as_bool(option(spec, "allow_download", False)) or not as_bool(
        option(spec, "local_files_only", True))


def resolve_folder(spec) -> Path:
    """A local folder for spec.path: a folder, or a Hugging Face id found in the local cache."""
    path = spec.path or spec.id
    if Path(path).expanduser().is_dir():
        return Path(path).expanduser()
    download = allow_download(spec)
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo_id=path,
            revision=option(spec, "revision"),
            cache_dir=option(spec, "cache_dir"),
            local_files_only=not download,
        )
    except Exception as exc:
        hint = "" if download else (
            " (only the local Hugging Face cache is searched; set the model option "
            "allow_download: true to fetch it)"
        )
        raise errors.ModelLoadError(
            f"model {spec.id!r}: {path!r} is not a folder and not in the Hugging Face "
            f"cache{hint}: {type(exc).__name__}: {exc}"
        ) from exc
    return Path(folder)


def max_length(spec, tokenizer, config: dict[str, Any], saved: int | None) -> int:
    """The longest input the model reads: the `max_length` option, else what
    sentence-transformers saved, else the tokenizer's `model_max_length`; never past the
    model's positions."""
    positions = int(config.get("max_position_embeddings") or 0)
    if positions and config.get("model_type") in OFFSET_POSITIONS:
        positions -= 2
    limit = getattr(tokenizer, "model_max_length", 0) or 0
    if not 0 < limit < UNSET_LENGTH:
        limit = positions or 512
    if positions:
        limit = min(limit, positions)
    wanted = int(option(spec, "max_length", saved) or 0)
    return max(2, min(wanted or limit, limit))


def load_chat_template(spec, tokenizer) -> ChatTemplate | None:
    """The tokenizer's chat template, compiled once; None if it has none or it is broken
    (tokenizing messages is then a 400; embedding does not need it)."""
    source = getattr(tokenizer, "chat_template", None)
    if not isinstance(source, str) or not source:
        return None
    try:
        return ChatTemplate(source, bos_token=tokenizer.bos_token or "",
                            eos_token=tokenizer.eos_token or "")
    except errors.ModelLoadError as exc:
        log.warning("model %s: %s; tokenizing messages is refused", spec.id, exc.message)
        return None


class Setup:
    """What a transformers model has once `Setup(spec, context)` ran: `torch`, `folder`,
    `n_threads`, `trust` (remote code), `tokenizer`, its `tokenizer_lock` and
    `chat_template`."""

    def __init__(self, spec, context):
        self.spec = spec
        if not allow_download(spec):
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.n_threads = max(1, int(option(spec, "n_threads", context.n_threads) or 1))
        # The tokenizers library's thread pool follows the same budget (read on first use).
        os.environ.setdefault("RAYON_NUM_THREADS", str(self.n_threads))

        import torch
        import transformers
        from transformers import AutoTokenizer

        transformers.utils.logging.disable_progress_bar()
        self.torch = torch
        torch.set_num_threads(self.n_threads)
        self.folder = resolve_folder(spec)
        self.trust = as_bool(option(spec, "trust_remote_code", False))
        context.report(f"loading tokenizer from {self.folder}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                str(self.folder), local_files_only=True, trust_remote_code=self.trust)
        except Exception as exc:
            raise errors.ModelLoadError(
                f"model {spec.id!r}: cannot load the tokenizer in {self.folder}: "
                f"{type(exc).__name__}: {exc}") from exc
        # HF fast tokenizers are not safe to share across threads.
        self.tokenizer_lock = threading.Lock()
        self.chat_template = load_chat_template(spec, self.tokenizer)

    def batcher(self, compute, default_max_batch: int, name: str) -> Batcher:
        """The batcher that runs `compute`, on a thread with this model's thread budget."""
        return Batcher(
            compute,
            max_batch=int(option(self.spec, "max_batch_size", default_max_batch)),
            max_wait=float(option(self.spec, "batch_wait_ms", 5)) / 1000.0,
            setup=lambda: self.torch.set_num_threads(self.n_threads),
            name=f"{name}-{self.spec.id}",
        )

    def slots(self) -> int:
        return int(self.spec.slots or option(self.spec, "slots", 64))
