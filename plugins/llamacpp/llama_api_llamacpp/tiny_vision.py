"""Write a tiny random-weight vision model for offline tests: the tiny llama of `tiny.py`
and a projector GGUF (`mmproj-*.gguf`) that llama.cpp's multimodal library (mtmd) loads.

The projector is of llama.cpp's `gemma3` type (tools/mtmd/clip.cpp): a SigLIP-style vision
transformer over fixed-size square images, average-pooled by `scale_factor`, RMS-normed and
projected to the language model's width. It is the simplest type that mtmd preprocesses to
one fixed size (no tiles, no slices): an image always costs (image_size / patch /
scale_factor)^2 tokens, 16 here. Needs `gguf`, `numpy` (and Pillow for `png_image`).
"""

from __future__ import annotations

import io
from pathlib import Path

from llama_api_llamacpp.tiny import write_tiny_gguf

IMAGE_SIZE = 32
PATCH_SIZE = 4
SCALE_FACTOR = 2
# What one image costs in the prompt: (32 / 4 / 2)^2.
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE // SCALE_FACTOR) ** 2


def write_tiny_mmproj(path, n_embd_text: int = 64, n_embd: int = 32, n_layer: int = 1,
                      seed: int = 0) -> Path:
    """A random-weight `gemma3` projector whose output width is `n_embd_text` (the language
    model's `n_embd`: mtmd refuses a pair whose widths differ)."""
    import gguf
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_ff, n_head = 2 * n_embd, 4
    n_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2

    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_name("tiny-random-mmproj")
    writer.add_file_type(0)  # all f32
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "gemma3")
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    writer.add_uint32("clip.vision.patch_size", PATCH_SIZE)
    writer.add_uint32("clip.vision.embedding_length", n_embd)
    writer.add_uint32("clip.vision.feed_forward_length", n_ff)
    writer.add_uint32("clip.vision.block_count", n_layer)
    writer.add_uint32("clip.vision.projection_dim", n_embd_text)
    writer.add_uint32("clip.vision.attention.head_count", n_head)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_uint32("clip.vision.projector.scale_factor", SCALE_FACTOR)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    def weight(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def ones(n=n_embd):
        return np.ones(n, dtype=np.float32)

    # numpy shapes are ggml's `ne` reversed: a linear layer is (out, in).
    writer.add_tensor("v.patch_embd.weight", weight(n_embd, 3, PATCH_SIZE, PATCH_SIZE))
    writer.add_tensor("v.patch_embd.bias", weight(n_embd))
    writer.add_tensor("v.position_embd.weight", weight(n_patches, n_embd))
    for i in range(n_layer):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"v.blk.{i}.{name}.weight", weight(n_embd, n_embd))
            writer.add_tensor(f"v.blk.{i}.{name}.bias", weight(n_embd))
        for norm in ("ln1", "ln2"):
            writer.add_tensor(f"v.blk.{i}.{norm}.weight", ones())
            writer.add_tensor(f"v.blk.{i}.{norm}.bias", weight(n_embd, scale=0.0))
        writer.add_tensor(f"v.blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"v.blk.{i}.ffn_up.bias", weight(n_ff))
        writer.add_tensor(f"v.blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
        writer.add_tensor(f"v.blk.{i}.ffn_down.bias", weight(n_embd))
    writer.add_tensor("v.post_ln.weight", ones())
    writer.add_tensor("v.post_ln.bias", weight(n_embd, scale=0.0))
    writer.add_tensor("mm.soft_emb_norm.weight", ones())
    # Strong enough that an image moves a random model's greedy answer.
    writer.add_tensor("mm.input_projection.weight", weight(n_embd, n_embd_text, scale=1.0))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_vision_model(folder, name: str = "tiny-vision", seed: int = 0) -> Path:
    """`<name>.gguf` and `mmproj-<name>.gguf` in `folder`, as published vision GGUFs lie
    (discovery pairs them); returns the language model's path."""
    folder = Path(folder)
    model = write_tiny_gguf(folder / f"{name}.gguf", seed=seed)
    write_tiny_mmproj(folder / f"mmproj-{name}.gguf", seed=seed)
    return model


def png_image(color=(255, 0, 0), size=(48, 40), pattern: int = 0, fmt: str = "PNG") -> bytes:
    """A small test picture: a plain color, with stripes every `pattern` pixels (0: none)."""
    from PIL import Image

    image = Image.new("RGB", size, color)
    if pattern:
        pixels = image.load()
        for x in range(0, size[0], pattern):
            for y in range(size[1]):
                pixels[x, y] = (255 - color[0], 255 - color[1], 255 - color[2])
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()
