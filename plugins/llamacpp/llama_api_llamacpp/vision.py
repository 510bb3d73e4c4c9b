"""Images for vision GGUFs: llama.cpp's multimodal library (mtmd) with the model's projector.

A prompt with images is a list of token ids and `ImageSlot`s: each image fills as many
slots as the positions its embeddings take, so that the prompt's length is what the model
reads (usage, /tokenize, the context check) and the batch engine's prefix reuse compares
slot by slot. A slot equals only the same position of the same image (its pixels' digest),
so two prompts with the same text and different images never share cached cells.
The engine decodes an image whole (`decode_images`, on its thread): mtmd encodes it with
the projector and decodes the embeddings into the sequence's cells.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_api import errors
from llama_api.contract.records import IMAGE_MARKER

log = logging.getLogger("llama_api_llamacpp")


class _Chunks:
    """An mtmd_input_chunks collection, freed when the last slot that needs it goes."""

    def __init__(self, mtmd, pointer):
        self.mtmd, self.pointer = mtmd, pointer

    def __del__(self):
        self.mtmd.mtmd_input_chunks_free(self.pointer)


@dataclass(frozen=True, eq=False)
class ImageChunk:
    chunk: int  # the mtmd_input_chunk (owned by `owner`)
    n_pos: int
    owner: _Chunks


@dataclass(frozen=True)
class ImageSlot:
    """Position `index` of the image whose pixels hash to `digest`; `chunk` is needed only
    until the engine has decoded it (what a slot's cache keeps leaves it out)."""

    digest: str
    index: int
    chunk: ImageChunk | None = field(default=None, compare=False, hash=False, repr=False)


def leading_tokens(items: list) -> int:
    """How many token ids come before the first image slot."""
    for n, item in enumerate(items):
        if not isinstance(item, int):
            return n
    return len(items)


def image_start(prompt: list, keep: int) -> int:
    """`keep` moved back to the start of the image it falls in (an image decodes whole)."""
    if keep < len(prompt) and isinstance(prompt[keep], ImageSlot):
        return keep - prompt[keep].index
    return keep


def import_mtmd():
    try:
        from llama_cpp import mtmd_cpp
    except (ImportError, OSError, FileNotFoundError, RuntimeError) as exc:
        raise errors.ModelLoadError(
            "this llama-cpp-python was built without llama.cpp's multimodal library (mtmd), "
            "which vision models need: rebuild it with CMAKE_ARGS=-DLLAVA_BUILD=ON "
            "(`make setup` does; pip reuses a cached wheel: add --no-cache-dir "
            f"--force-reinstall --no-binary llama_cpp_python): {exc}") from exc
    return mtmd_cpp


_log_callback = None  # kept alive: llama.cpp holds the pointer


def _warnings_only(mtmd) -> None:
    """mtmd logs every image it reads at INFO, a dozen lines a request, into the worker's
    log: keep its warnings and errors (why a projector failed to load, say)."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp

    last = [0]

    def forward(level, text, user_data):
        if level != 5:  # 5: the previous line goes on
            last[0] = level
        if last[0] >= 3:  # warn, error: to stderr, which the server logs
            sys.stderr.write(text.decode("utf-8", errors="replace"))
            sys.stderr.flush()

    _log_callback = llama_cpp.llama_log_callback(forward)
    mtmd.mtmd_log_set(_log_callback, None)
    mtmd.mtmd_helper_log_set(_log_callback, None)


class Vision:
    """The projector of one loaded model, in an mtmd context. mtmd contexts are not
    thread-safe: request threads (reading images into chunks) and the engine thread
    (encoding them) take `lock`."""

    def __init__(self, path: str, llm, n_threads: int, use_gpu: bool, model_id: str):
        self.mtmd = mtmd = import_mtmd()
        self.model_id = model_id
        self.path = Path(path)
        if not self.path.is_file():
            raise errors.ModelLoadError(f"{model_id}: projector file not found: {path}")
        _warnings_only(mtmd)
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = max(1, n_threads)
        params.print_timings = False
        params.media_marker = IMAGE_MARKER.encode()
        self.ctx = mtmd.mtmd_init_from_file(str(self.path).encode(), llm._model.model, params)
        if not self.ctx:
            raise errors.ModelLoadError(
                f"{model_id}: llama.cpp could not load the projector {self.path.name} (not a "
                "projector GGUF, an unsupported type, or made for another model: its width "
                "must match the model's; the worker log says which)")
        if not mtmd.mtmd_support_vision(self.ctx) or mtmd.mtmd_decode_use_mrope(self.ctx):
            self.close()
            raise errors.ModelLoadError(
                f"{model_id}: the projector {self.path.name} has no image encoder, or places "
                "images with M-RoPE (the Qwen2-VL family), which this backend can't batch yet")
        self.lock = threading.Lock()
        self.marker = IMAGE_MARKER.encode()

    def close(self) -> None:
        if self.ctx:
            self.mtmd.mtmd_free(self.ctx)
            self.ctx = None

    def items(self, model, pieces, images, add_bos: bool = True) -> list:
        """A rendered chat prompt's tokens (as `model.chat_tokens` reads them), each image
        marker replaced by what the projector makes of the image: its slots, and the
        model's own tokens around them (e.g. Gemma 3's <start_of_image>)."""
        items: list = []
        placed = 0
        for piece in pieces:
            for n, text in enumerate(piece.text.split(IMAGE_MARKER)):
                if n > 0:
                    if placed >= len(images):
                        raise errors.BadRequest("the prompt holds more image markers than the "
                                                "request has images", param="messages")
                    items += self.image_items(images[placed])
                    placed += 1
                if not items:
                    items += model.prompt_tokens(text, special=piece.special, add_bos=add_bos)
                elif text:
                    items += model.tokenize(text, add_bos=False, special=piece.special)
        if placed != len(images):
            raise errors.BadRequest(
                f"model {self.model_id}'s chat template left out {len(images) - placed} of the "
                "images (it drops the content of some messages)", param="messages")
        if items and isinstance(items[-1], ImageSlot):  # logits come from a text token
            items += model.tokenize("\n", add_bos=False, special=False)
        return items

    def image_items(self, image) -> list:
        mtmd = self.mtmd
        pixels = (ctypes.c_uint8 * len(image.rgb)).from_buffer_copy(image.rgb)
        bitmap = mtmd.mtmd_bitmap_init(image.width, image.height, pixels)
        if not bitmap:
            raise errors.BadRequest(f"model {self.model_id} could not take a "
                                    f"{image.width}x{image.height} image", param="messages")
        chunks = mtmd.mtmd_input_chunks_init()
        owner = _Chunks(mtmd, chunks)
        try:
            mtmd.mtmd_bitmap_set_id(bitmap, image.digest.encode())
            text = mtmd.mtmd_input_text(text=self.marker, text_len=len(self.marker),
                                        add_special=False, parse_special=True)
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            with self.lock:
                status = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), bitmaps, 1)
        finally:
            mtmd.mtmd_bitmap_free(bitmap)
        if status != 0:
            raise errors.BadRequest(f"model {self.model_id}'s projector could not read a "
                                    f"{image.width}x{image.height} image (mtmd error "
                                    f"{status})", param="messages")
        items: list = []
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            kind = mtmd.mtmd_input_chunk_get_type(chunk)
            if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                items += [int(ids[j]) for j in range(n.value)]
            elif kind == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                ref = ImageChunk(chunk, int(mtmd.mtmd_input_chunk_get_n_pos(chunk)), owner)
                items += [ImageSlot(image.digest, j, ref) for j in range(ref.n_pos)]
            else:
                raise errors.BadRequest("only images are supported", param="messages")
        return items

    # -- engine thread -----------------------------------------------------------------

    def decode_images(self, engine, active: list) -> None:
        """Decode, for every sequence whose prompt goes on with an image, its images up to
        its next text token; a failure ends that sequence alone."""
        for seq in list(active):
            try:
                while seq.tokens and isinstance(seq.tokens[0], ImageSlot):
                    self._decode(engine, seq)
            except Exception as exc:  # noqa: BLE001 -- fails this request only
                active.remove(seq)
                engine._finish(seq, exc)

    def _decode(self, engine, seq) -> None:
        first: ImageSlot = seq.tokens[0]
        ref = first.chunk
        if ref is None or first.index != 0:  # a cached prefix never ends inside an image
            raise errors.LlamaApiError("an image was cut in two in the prompt")
        new_n_past = engine.lib.llama_pos(0)
        with self.lock:
            status = self.mtmd.mtmd_helper_eval_chunk_single(
                self.ctx, engine.ctx, ref.chunk, seq.n_past, seq.seq_id, engine.n_batch,
                False, ctypes.byref(new_n_past))
        if status != 0:
            raise errors.LlamaApiError(f"decoding an image failed (mtmd error {status})")
        taken, seq.tokens = seq.tokens[:ref.n_pos], seq.tokens[ref.n_pos:]
        seq.decoded += [ImageSlot(slot.digest, slot.index) for slot in taken]
        seq.n_past = int(new_n_past.value)


def pair_info(vision: Vision | None) -> dict[str, Any]:
    """What /v1/models shows of a loaded model's projector."""
    if vision is None:
        return {"capabilities": []}
    return {"capabilities": ["vision"], "mmproj": str(vision.path)}
