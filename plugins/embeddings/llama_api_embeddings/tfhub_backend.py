"""The `tfhub` backend: TensorFlow SavedModel sentence encoders (universal-sentence-encoder, ...).

Imported only in the worker process; TensorFlow is imported inside `TFHubEmbedder` only.
A local SavedModel folder (or one already in the TF-Hub cache) loads with
`tf.saved_model.load`, as `tensorflow_hub.load` does once it has a folder; tensorflow_hub
itself is imported only to download a handle (`allow_download`).
The model is called with a batch of strings and returns one vector per string.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import tempfile
from pathlib import Path

from llama_api import errors
from llama_api_embeddings import discovery
from llama_api_embeddings.batching import Batcher
from llama_api_embeddings.common import (
    BatchedEmbedResult,
    as_bool,
    option,
)

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the tfhub backend needs TensorFlow: pip install 'llama-api-embeddings[tfhub]' "
    "(or pip install tensorflow-cpu)"
)
DOWNLOAD_HINT = (
    "downloading a TF Hub handle needs tensorflow_hub: pip install --no-deps "
    "tensorflow-hub tf-keras (--no-deps: tf-keras would pull the CUDA tensorflow), or put "
    "the SavedModel folder in the models folder"
)


def cache_dir(spec) -> Path:
    """tensorflow_hub's cache folder: TFHUB_CACHE_DIR, else <tmp>/tfhub_modules."""
    folder = option(spec, "cache_dir") or os.environ.get("TFHUB_CACHE_DIR")
    return Path(folder or os.path.join(tempfile.gettempdir(), "tfhub_modules")).expanduser()


def resolve_handle(spec) -> str:
    """A local SavedModel folder for spec.path: a folder, a handle already in the cache, or
    (allow_download) a handle that tensorflow_hub downloads into the cache."""
    handle = spec.path or spec.id
    if Path(handle).expanduser().is_dir():
        return str(Path(handle).expanduser())
    # tensorflow_hub caches a handle in <cache>/<sha1 of the handle>.
    for candidate in {handle, handle.rstrip("/")}:
        folder = cache_dir(spec) / hashlib.sha1(candidate.encode("utf8")).hexdigest()
        if discovery.is_saved_model(folder):
            return str(folder)
    if as_bool(option(spec, "allow_download", False)):
        return download(spec, handle)
    raise errors.ModelLoadError(
        f"model {spec.id!r}: {handle!r} is not a SavedModel folder and is not in the "
        f"TF-Hub cache {cache_dir(spec)} (set the model option allow_download: true to "
        "fetch it)"
    )


def download(spec, handle: str) -> str:
    """The folder tensorflow_hub downloads `handle` into (our cache folder)."""
    try:
        import tensorflow_hub as hub
    except ImportError as exc:
        if "pkg_resources" in str(exc):  # setuptools 81+ dropped what tensorflow_hub imports
            raise errors.ModelLoadError(
                f"model {spec.id!r}: tensorflow_hub needs pkg_resources: "
                f"pip install 'setuptools<81' ({exc})"
            ) from exc
        raise errors.ModelLoadError(f"model {spec.id!r}: {DOWNLOAD_HINT} ({exc})") from exc
    os.environ["TFHUB_CACHE_DIR"] = str(cache_dir(spec))
    try:
        return hub.resolve(handle)
    except Exception as exc:
        raise errors.ModelLoadError(
            f"model {spec.id!r}: cannot download {handle!r}: {type(exc).__name__}: {exc}"
        ) from exc


class TFHubEmbedder:
    backend = "tfhub"

    def __init__(self, spec, context):
        self.spec = spec
        self.n_threads = max(1, int(option(spec, "n_threads", context.n_threads) or 1))
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise errors.ModelLoadError(f"{INSTALL_HINT} ({exc})") from exc
        self.tf = tf
        try:  # only possible before TensorFlow runs its first op
            tf.config.threading.set_intra_op_parallelism_threads(self.n_threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass
        handle = resolve_handle(spec)
        context.report(f"loading SavedModel {handle}")
        # A TF1 Hub module (tfhub_module.pb) keeps its graph under the empty tag set.
        tags = [] if (Path(handle) / "tfhub_module.pb").is_file() else None
        try:
            self.module = tf.saved_model.load(handle, tags=tags)
        except Exception as exc:
            raise errors.ModelLoadError(
                f"model {spec.id!r}: cannot load {handle}: {type(exc).__name__}: {exc}"
            ) from exc
        if callable(self.module):
            self.function = self.module
        elif "serving_default" in getattr(self.module, "signatures", {}):
            signature = self.module.signatures["serving_default"]
            self.function = lambda texts: next(iter(signature(texts).values()))
        else:
            raise errors.ModelLoadError(
                f"model {spec.id!r}: the SavedModel is not callable and has no "
                "serving_default signature"
            )
        self.normalize = as_bool(option(spec, "normalize", False))
        self.batcher = Batcher(
            self._compute,
            max_batch=int(option(spec, "max_batch_size", 64)),
            max_wait=float(option(spec, "batch_wait_ms", 5)) / 1000.0,
            name=f"embed-{spec.id}",
        )
        self.slots = int(spec.slots or option(spec, "slots", 64))
        context.report("warming up", 0.9)
        self.dims = int(self._compute(["warm up"]).shape[1])
        self.info = {
            "backend": self.backend,
            "path": handle,
            "dims": self.dims,
            "normalize": self.normalize,
            "n_threads": self.n_threads,
            "max_batch_size": self.batcher.max_batch,
        }

    def embed(self, request) -> BatchedEmbedResult:
        if not isinstance(request.input[0], str):  # the core checked: all one kind
            raise errors.NotSupported(
                "this TensorFlow Hub model takes text, not token ids", param="input"
            )
        texts = list(request.input)
        vectors, job = self.batcher.run(texts)  # one compute thread: TF runs a batch at a time
        return BatchedEmbedResult(
            embeddings=vectors,
            # These models tokenize inside the graph and don't expose a count:
            # usage counts whitespace-separated words instead.
            prompt_tokens=sum(len(text.split()) for text in texts),
            batch_size=job.batch_size,
            batch_requests=job.batch_requests,
        )

    def _compute(self, texts: list[str]):
        import numpy as np

        tf = self.tf
        result = self.function(tf.constant(texts, dtype=tf.string))
        vectors = np.asarray(result, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise errors.LlamaApiError(
                f"the SavedModel returned shape {vectors.shape} for {len(texts)} texts"
            )
        if self.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def close(self) -> None:
        self.batcher.close()
        self.function = None
        self.module = None
        gc.collect()
