"""The `transformers` backend: PyTorch + transformers encoders, pooled like sentence-transformers.

Imported only in the worker process (it imports torch and transformers).
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from llama_api import errors
from llama_api_embeddings import discovery, sentence_modules
from llama_api_embeddings.common import BatchedEmbedResult, as_bool, option
from llama_api_embeddings.loading import Setup, max_length

log = logging.getLogger(__name__)

KNOWN_OPTIONS = {
    "pooling", "normalize", "max_length", "prefix", "query_prefix", "passage_prefix",
    "input_type", "device", "dtype", "trust_remote_code", "local_files_only",
    "allow_download", "n_threads", "max_batch_size", "max_batch_tokens", "batch_wait_ms",
    "slots", "revision", "cache_dir",
}


class TransformersEmbedder:
    """A loaded encoder, its tokenizer, and the batcher that runs it."""

    backend = "transformers"

    def __init__(self, spec, context):
        unknown = set(spec.options or {}) - KNOWN_OPTIONS
        if unknown:
            log.warning("model %s: unknown options ignored: %s", spec.id, sorted(unknown))
        self.spec = spec
        setup = Setup(spec, context)
        folder = setup.folder
        self.torch, self.folder, self.n_threads = setup.torch, folder, setup.n_threads
        self.tokenizer, self.tokenizer_lock = setup.tokenizer, setup.tokenizer_lock
        self.chat_template = setup.chat_template
        settings = discovery.sentence_transformers_settings(folder)
        if settings.get("unsupported"):
            raise errors.ModelLoadError(
                f"model {spec.id!r}: {folder} has sentence-transformers modules this backend "
                f"can't run: {', '.join(settings['unsupported'])} (it runs the encoder, "
                f"Pooling, {', '.join(discovery.OUTPUT_MODULES)})"
            )
        from transformers import AutoConfig, AutoModel

        try:
            config = AutoConfig.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=setup.trust
            )
            context.report("loading weights", 0.3)
            model_class = AutoModel
            if getattr(config, "model_type", "") in {"t5", "mt5"}:
                from transformers import T5EncoderModel

                model_class = T5EncoderModel
            dtype = self._dtype(option(spec, "dtype"))
            kwargs: dict[str, Any] = {"local_files_only": True,
                                      "trust_remote_code": setup.trust}
            if dtype is not None:
                kwargs["dtype"] = dtype
            self.model = model_class.from_pretrained(str(folder), **kwargs)
        except errors.LlamaApiError:
            raise
        except Exception as exc:
            raise errors.ModelLoadError(
                f"model {spec.id!r}: cannot load {folder}: {type(exc).__name__}: {exc}"
            ) from exc
        self.model.eval()
        self.device = self._device(option(spec, "device", "cpu"))
        try:
            self.model.to(self.device)
        except Exception as exc:
            raise errors.ModelLoadError(
                f"model {spec.id!r}: cannot move it to {self.device}: {exc}"
            ) from exc

        # Pooling and the modules after it: options, else what sentence-transformers' config
        # says.
        try:
            self.pooling = sentence_modules.parse_pooling(
                option(spec, "pooling", settings.get("pooling", "mean")))
        except errors.ModelLoadError as exc:
            raise errors.ModelLoadError(f"model {spec.id!r}: {exc.message}") from exc
        # include_prompt: false (INSTRUCTOR-style): the prefix's tokens are not pooled.
        self.include_prompt = settings.get("include_prompt", True)
        normalize_option = option(spec, "normalize")
        if normalize_option is not None:
            normalize_option = as_bool(normalize_option)
        try:
            self.outputs = sentence_modules.output_modules(
                settings.get("modules", []), normalize_option, self.device)
        except errors.LlamaApiError:
            raise
        except Exception as exc:
            raise errors.ModelLoadError(
                f"model {spec.id!r}: cannot load a module in {folder}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self.normalize = sentence_modules.normalize in self.outputs

        self.max_length = max_length(spec, self.tokenizer, config.to_dict(),
                                     settings.get("max_length"))

        # Token layout: the special tokens wrapped around one text.
        self.head, self.tail = self._special_tokens()
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        self.uses_token_types = "token_type_ids" in getattr(
            self.tokenizer, "model_input_names", []
        )
        self.prefix, self.known_prefixes = self._prefixes(spec, settings)
        self.prefix_ids = (
            self.tokenizer(self.prefix, add_special_tokens=False)["input_ids"]
            if self.prefix else []
        )
        self.prompt_tokens = self._prompt_tokens()

        # Rows are sorted by length and run in micro-batches of at most this many tokens
        # (padding included): on CPU, small batches of similar lengths waste the least.
        default_tokens = 1024 if self.device.type == "cpu" else 16384
        self.max_batch_tokens = int(option(spec, "max_batch_tokens", default_tokens))
        self.batcher = setup.batcher(self._compute, 64, "embed")
        self.slots = setup.slots()

        context.report("warming up", 0.9)
        warm, _ = self._compute(["warm up"])
        self.dims = int(warm.shape[1])
        self.info = {
            "backend": self.backend,
            "path": str(folder),
            "dims": self.dims,
            "max_length": self.max_length,
            "pooling": "+".join(self.pooling),
            "normalize": self.normalize,
            "prefix": self.prefix,
            "device": str(self.device),
            "n_threads": self.n_threads,
            "max_batch_size": self.batcher.max_batch,
        }

    # Loading helpers -----------------------------------------------------------

    def _dtype(self, name):
        if not name:
            return None
        value = getattr(self.torch, str(name), None)
        if not isinstance(value, self.torch.dtype):
            raise errors.ModelLoadError(f"model {self.spec.id!r}: unknown dtype {name!r}")
        return value

    def _device(self, name: str):
        name = str(name or "cpu")
        if name == "auto":
            name = "cuda" if self.torch.cuda.is_available() else "cpu"
        try:
            return self.torch.device(name)
        except Exception as exc:
            raise errors.ModelLoadError(f"model {self.spec.id!r}: bad device {name!r}") from exc

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The special token ids the tokenizer puts before and after one text ([CLS], [SEP])."""
        sample = "hello world"
        wrapped = list(self.tokenizer(sample, add_special_tokens=True)["input_ids"])
        body = list(self.tokenizer(sample, add_special_tokens=False)["input_ids"])
        for at in range(len(wrapped) - len(body) + 1):
            if wrapped[at:at + len(body)] == body:
                return wrapped[:at], wrapped[at + len(body):]
        log.warning("model %s: can't tell its special tokens; token id input is read as is",
                    self.spec.id)
        return [], []

    def _prefixes(self, spec, settings) -> tuple[str, tuple[str, ...]]:
        """The prefix put before each text (e5: "query: "), and those a client may send itself."""
        query = option(spec, "query_prefix", settings.get("query_prefix", ""))
        passage = option(spec, "passage_prefix", settings.get("passage_prefix", ""))
        known = tuple(p for p in (query, passage) if p)
        prefix = option(spec, "prefix")
        if prefix is None:
            input_type = option(spec, "input_type")
            if input_type in (None, ""):
                # sentence-transformers' own default (config's default_prompt_name), if any.
                prefix = settings.get("default_prefix", "")
            elif input_type == "query":
                prefix = query
            elif input_type in ("passage", "document"):
                prefix = passage
            else:
                raise errors.ModelLoadError(
                    f"model {spec.id!r}: input_type must be 'query' or 'passage'"
                )
        return str(prefix), known

    def _prompt_tokens(self) -> dict[str, int]:
        """Per prefix, the leading tokens that pooling leaves out (none with include_prompt).

        Counted as sentence-transformers counts them: the prefix tokenized alone with the
        special tokens, less a closing special token ([SEP], EOS).
        """
        if self.include_prompt:
            return {}
        counts = {}
        special = set(self.tokenizer.all_special_ids)
        for prefix in sorted({self.prefix, *self.known_prefixes} - {""}, key=len, reverse=True):
            ids = self.tokenizer(prefix)["input_ids"]
            counts[prefix] = len(ids) - (1 if ids and ids[-1] in special else 0)
        return counts

    # Requests ------------------------------------------------------------------

    def encode_ids(self, items: list) -> list[list[int]]:
        """Token id inputs as the ids the model reads: special tokens added, truncated."""
        body_limit = self.max_length - len(self.head) - len(self.tail)
        rows = []
        for item in items:
            ids = [int(t) for t in item]
            if any(t < 0 or t >= self.vocab_size for t in ids):
                raise errors.BadRequest(
                    f"token ids must be in [0, {self.vocab_size})", param="input"
                )
            # Already wrapped in the model's special tokens: unwrap, then wrap again.
            if (self.head or self.tail) and ids[:len(self.head)] == self.head and (
                not self.tail or ids[-len(self.tail):] == self.tail
            ) and len(ids) >= len(self.head) + len(self.tail):
                ids = ids[len(self.head):len(ids) - len(self.tail)]
            if self.prefix_ids and ids[:len(self.prefix_ids)] != self.prefix_ids:
                ids = self.prefix_ids + ids
            rows.append(self.head + ids[:body_limit] + self.tail)
        return rows

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Texts as the ids the model reads (one tokenizer call for the whole batch)."""
        with self.tokenizer_lock:  # HF fast tokenizers are not safe to share across threads
            encoded = self.tokenizer(
                [self._with_prefix(text) for text in texts],
                add_special_tokens=True,
                truncation=True,
                max_length=self.max_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
        return [list(ids) for ids in encoded]

    def _with_prefix(self, text: str) -> str:
        if not self.prefix or text.startswith(self.known_prefixes + (self.prefix,)):
            return text
        return self.prefix + text

    def skipped_tokens(self, row) -> int:
        """Leading tokens of a row (text with its prefix, or token ids) left out of pooling."""
        if not self.prompt_tokens:
            return 0
        if not isinstance(row, str):  # encode_ids put the prefix in front
            return self.prompt_tokens.get(self.prefix, 0)
        text = self._with_prefix(row)
        return next((n for p, n in self.prompt_tokens.items() if text.startswith(p)), 0)

    def embed(self, request) -> BatchedEmbedResult:
        # The core checked the input (count, no empty item, one kind) and cuts the vectors
        # to `dimensions`; the vocabulary and the length limit are this model's.
        token_ids = not isinstance(request.input[0], str)
        # Texts are tokenized on the compute thread, a whole batch at once; token ids
        # are checked here, so that a bad one fails only its own request.
        self.batcher.announce()
        try:
            rows = self.encode_ids(request.input) if token_ids else list(request.input)
        except BaseException:
            self.batcher.withdraw()
            raise
        (vectors, lengths), job = self.batcher.run(rows, announced=True)
        return BatchedEmbedResult(
            embeddings=vectors,
            prompt_tokens=int(lengths.sum()),
            batch_size=job.batch_size,
            batch_requests=job.batch_requests,
        )

    # Compute thread --------------------------------------------------------------

    def _compute(self, rows: list):
        """(pooled vectors, token counts) for rows of texts or token ids.

        Texts are tokenized together; rows are sorted by length and run in padded
        micro-batches of at most `max_batch_tokens` tokens.
        """
        import numpy as np

        torch = self.torch
        skipped = [self.skipped_tokens(row) for row in rows]
        texts = [i for i, row in enumerate(rows) if isinstance(row, str)]
        if texts:
            rows = list(rows)
            for i, ids in zip(texts, self.tokenize([rows[i] for i in texts])):
                rows[i] = ids
        lengths = np.array([len(row) for row in rows], dtype=np.int64)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = None
        start = 0
        with torch.inference_mode():
            while start < len(order):
                end = start + 1
                while end < len(order) and (end - start + 1) * len(rows[order[end]]) <= max(
                    self.max_batch_tokens, len(rows[order[end]])
                ):
                    end += 1
                chunk = order[start:end]
                vectors = self._forward([rows[i] for i in chunk], [skipped[i] for i in chunk])
                vectors = vectors.float().cpu().numpy()
                if out is None:
                    out = np.empty((len(rows), vectors.shape[1]), dtype=np.float32)
                out[chunk] = vectors
                start = end
        return out, lengths

    def _forward(self, rows: list[list[int]], skipped: list[int]):
        torch = self.torch
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if self.uses_token_types:
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        hidden = self.model(**inputs)[0]
        vectors = sentence_modules.pool(hidden, inputs["attention_mask"], self.pooling, skipped)
        for module in self.outputs:
            vectors = module(vectors)
        return vectors

    def close(self) -> None:
        self.batcher.close()
        self.model = None
        self.tokenizer = None
        self.outputs = []
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
