"""The sentence-transformers modules after the encoder: Pooling, Dense, LayerNorm, Normalize.

Each computes what its sentence-transformers class computes, from the module's own folder
(config.json and weights), so that our vectors equal `SentenceTransformer(folder).encode`.
Imported only in the worker (torch).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from llama_api import errors
from llama_api_embeddings.discovery import POOLING_MODES, read_json

ACTIVATIONS = {
    "Tanh": torch.tanh, "ReLU": torch.relu, "GELU": torch.nn.functional.gelu,
    "Sigmoid": torch.sigmoid, "Identity": None, "": None,
}


def parse_pooling(value: str) -> tuple[str, ...]:
    """"mean", "cls+mean", ...: the modes, in the order their vectors are concatenated."""
    modes = [mode.strip() for mode in str(value).lower().split("+")]
    unknown = [mode for mode in modes if mode not in POOLING_MODES]
    if unknown or not modes:
        raise errors.ModelLoadError(
            f"pooling {value!r} is not one of {POOLING_MODES} (or several joined with '+')"
        )
    return tuple(mode for mode in POOLING_MODES if mode in modes)


def pool(hidden, attention_mask, modes: tuple[str, ...], prompt_lengths=None):
    """One vector per row: the pooling modes concatenated.

    `prompt_lengths[i]` leading tokens of row i are left out of pooling (a Pooling config
    with `include_prompt: false`), as sentence-transformers masks them: every mode then
    reads only the tokens after the prompt, `cls` included (the first of them).
    Rows are right-padded.
    """
    mask = attention_mask
    if prompt_lengths is not None and any(prompt_lengths):
        positions = torch.arange(mask.shape[1], device=mask.device)
        lengths = torch.as_tensor(prompt_lengths, device=mask.device)
        mask = mask * (positions[None, :] >= lengths[:, None]).to(mask.dtype)
    expanded = mask.unsqueeze(-1).to(hidden.dtype)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    # Position i (from 1) of each pooled token; 0 elsewhere.
    steps = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype)
    weights = expanded * steps[None, :, None]
    vectors = []
    for mode in modes:
        if mode == "cls":  # the first pooled token
            vectors.append(hidden[rows, mask.to(torch.int).argmax(dim=1)])
        elif mode == "max":
            vectors.append(hidden.masked_fill(expanded == 0, -1e9).max(dim=1).values)
        elif mode in ("mean", "mean_sqrt_len"):
            summed = (hidden * expanded).sum(dim=1)
            counts = expanded.sum(dim=1).clamp(min=1e-9)
            vectors.append(summed / (counts if mode == "mean" else counts.sqrt()))
        elif mode == "weightedmean":
            # Later tokens weigh more: token i weighs i (SGPT, arXiv:2202.08904).
            vectors.append((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9))
        elif mode == "last":  # the last pooled token (zeros when there is none)
            last = weights[:, :, 0].argmax(dim=1)
            vectors.append((hidden * expanded)[rows, last])
    return vectors[0] if len(vectors) == 1 else torch.cat(vectors, dim=1)


def module_weights(folder: Path) -> dict:
    """A module folder's state dict (model.safetensors, else pytorch_model.bin)."""
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    return torch.load(str(folder / "pytorch_model.bin"), map_location="cpu", weights_only=True)


def dense(folder: Path, device) -> Callable:
    """A Dense module: a linear layer, then its activation."""
    config = read_json(folder / "config.json") or {}
    state = module_weights(folder)
    weight = state["linear.weight"].to(device)
    bias = state.get("linear.bias")
    bias = bias.to(device) if bias is not None else None
    activation = str(config.get("activation_function", "")).rsplit(".", 1)[-1]
    if activation not in ACTIVATIONS:
        raise errors.ModelLoadError(f"Dense activation {activation!r} is not supported")
    act = ACTIVATIONS[activation]

    def apply(x):
        y = torch.nn.functional.linear(x, weight.to(x.dtype),
                                       None if bias is None else bias.to(x.dtype))
        return y if act is None else act(y)

    return apply


def layer_norm(folder: Path, device) -> Callable:
    """A LayerNorm module: torch's LayerNorm over the sentence vector (default eps)."""
    config = read_json(folder / "config.json") or {}
    state = module_weights(folder)
    weight = state["norm.weight"].to(device)
    bias = state.get("norm.bias")
    bias = bias.to(device) if bias is not None else None
    shape = (int(config.get("dimension") or weight.shape[0]),)

    def apply(x):
        return torch.nn.functional.layer_norm(
            x, shape, weight.to(x.dtype), None if bias is None else bias.to(x.dtype)
        )

    return apply


def normalize(x):
    return torch.nn.functional.normalize(x, p=2, dim=1)


def output_modules(modules: list[dict], normalize_option: bool | None, device) -> list[Callable]:
    """The modules after pooling, in modules.json order.

    The `normalize` option overrides the folder: false drops its Normalize modules, true
    adds one at the end when it has none.
    """
    steps = []
    for module in modules:
        kind, folder = module["kind"], Path(module["path"])
        if kind == "Normalize":
            if normalize_option is not False:
                steps.append(normalize)
        elif kind == "Dense":
            steps.append(dense(folder, device))
        elif kind == "LayerNorm":
            steps.append(layer_norm(folder, device))
    if normalize_option and normalize not in steps:
        steps.append(normalize)
    return steps
