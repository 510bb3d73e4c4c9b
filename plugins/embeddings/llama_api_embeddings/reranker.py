"""Cross-encoder rerankers: a transformers sequence-classification model with one label
scores (query, document) pairs as sentence-transformers' `CrossEncoder.predict` does: the
pair tokenized together (truncated longest first), the logit through the model's
activation (sigmoid unless its config names another). Pairs of requests that arrive
together run in one batch (`batching.Batcher`).

`is_cross_encoder` runs in the server (discovery: standard library only); the
`CrossEncoderReranker` class imports torch and transformers when it loads, in the worker.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from llama_api import errors
from llama_api.contract.records import RerankResult
from llama_api_embeddings.common import option
from llama_api_embeddings.discovery import read_json

log = logging.getLogger(__name__)

TASK = "rerank"


def labels(config: dict) -> int:
    if isinstance(config.get("num_labels"), int):
        return config["num_labels"]
    return len(config.get("id2label") or {"0": ""})


def is_cross_encoder(folder: Path) -> bool:
    """A sequence-classification model with one label (or one sentence-transformers saved
    as a CrossEncoder): a reranker, not an encoder."""
    config = read_json(folder / "config.json")
    if not isinstance(config, dict) or labels(config) != 1:
        return False
    architectures = config.get("architectures") or []
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return True
    saved = read_json(folder / "config_sentence_transformers.json") or {}
    return isinstance(saved, dict) and saved.get("model_type") == "CrossEncoder"


def mark_rerankers(found: list[dict]) -> list[dict]:
    """Discovery's transformers folders that hold cross-encoders, marked as rerankers."""
    for spec in found:
        if spec["backend"] == "transformers" and is_cross_encoder(Path(spec["path"])):
            spec["meta"] = {**spec.get("meta", {}), "task": TASK}
            spec["meta"].pop("dims", None)
    return found


def is_reranker(spec) -> bool:
    if (spec.meta or {}).get("task") == TASK:
        return True
    folder = Path(spec.path or "").expanduser()
    return folder.is_dir() and is_cross_encoder(folder)


def activation_path(folder: Path, config: dict) -> str | None:
    """The activation sentence-transformers applies, by dotted path; None: its default."""
    saved = read_json(folder / "config_sentence_transformers.json") or {}
    for path in (saved.get("activation_fn") if isinstance(saved, dict) else None,
                 (config.get("sentence_transformers") or {}).get("activation_fn"),
                 config.get("sbert_ce_default_activation_function")):
        if path:
            return str(path)
    return None


def load_activation(model_id: str, path: str | None):
    """A torch activation module; like sentence-transformers without trust_remote_code,
    only torch's own are loaded (others fall back to sigmoid, with a warning)."""
    import torch

    if path is None:
        return torch.nn.Sigmoid()
    if not path.startswith("torch."):
        log.warning("model %s: activation %s is not torch's; using sigmoid", model_id, path)
        return torch.nn.Sigmoid()
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)()
    except (ImportError, AttributeError, TypeError) as exc:
        raise errors.ModelLoadError(f"model {model_id!r}: unknown activation {path}: {exc}") \
            from exc


class CrossEncoderReranker:
    """A loaded cross-encoder, its tokenizer, and the batcher that runs it."""

    backend = "transformers"

    def __init__(self, spec, context):
        from llama_api_embeddings.loading import Setup, max_length

        self.spec = spec
        setup = Setup(spec, context)
        self.torch, self.n_threads = setup.torch, setup.n_threads
        self.tokenizer, self.tokenizer_lock = setup.tokenizer, setup.tokenizer_lock
        self.chat_template = setup.chat_template
        folder = setup.folder
        config = read_json(folder / "config.json") or {}
        if labels(config) != 1:
            raise errors.ModelLoadError(
                f"model {spec.id!r}: {folder} classifies into {labels(config)} labels; a "
                "reranker (cross-encoder) has one")
        from transformers import AutoModelForSequenceClassification

        context.report(f"loading cross-encoder from {folder}")
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=setup.trust)
            self.device = self.torch.device(str(option(spec, "device", "cpu")))
            self.model.to(self.device)
        except Exception as exc:
            raise errors.ModelLoadError(
                f"model {spec.id!r}: cannot load {folder}: {type(exc).__name__}: {exc}"
            ) from exc
        self.model.eval()
        self.activation = load_activation(spec.id, activation_path(folder, config))
        saved = read_json(folder / "sentence_bert_config.json") or {}
        self.max_length = max_length(spec, self.tokenizer, config, saved.get("max_seq_length"))
        self.batcher = setup.batcher(self._compute, 32, "rerank")
        self.slots = setup.slots()
        self.info = {"backend": self.backend, "task": TASK, "path": str(folder),
                     "max_length": self.max_length, "device": str(self.device),
                     "activation": type(self.activation).__name__,
                     "n_threads": self.n_threads, "max_batch_size": self.batcher.max_batch}

    def rerank(self, request) -> RerankResult:
        pairs = [(request.query, document) for document in request.documents]
        (scores, lengths), _ = self.batcher.run(pairs)
        return RerankResult(scores=[float(score) for score in scores],
                            prompt_tokens=int(lengths.sum()))

    def embed(self, request):
        raise errors.NotSupported(f"model {self.spec.id} is a reranker (cross-encoder): it "
                                  "scores pairs with /v1/rerank, it does not embed",
                                  param="model")

    def _compute(self, pairs: list[tuple[str, str]]):
        """(scores, tokens per pair) for a batch of pairs."""
        import numpy as np

        torch = self.torch
        with self.tokenizer_lock:  # HF fast tokenizers are not safe to share across threads
            features = self.tokenizer([query for query, _ in pairs],
                                      [document for _, document in pairs],
                                      padding=True, truncation="longest_first",
                                      max_length=self.max_length, return_tensors="pt")
        lengths = features["attention_mask"].sum(dim=1).numpy().astype(np.int64)
        with torch.inference_mode():
            logits = self.model(**features.to(self.device)).logits.float()
            scores = self.activation(logits).squeeze(-1)
        return scores.cpu().numpy().astype(np.float32), lengths

    def close(self) -> None:
        self.batcher.close()
        self.model = None
        self.tokenizer = None
