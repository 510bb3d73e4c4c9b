"""Fixtures: model folders written on the fly (config, tokenizer, fake safetensors headers)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

# Under --import-mode=importlib pytest puts no test folder on sys.path: this one goes there,
# for test modules to import exllama_fakes.py.
sys.path.insert(0, str(Path(__file__).parent))

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = [
    "hello",
    "world",
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "user",
    "assistant",
    "system",
    "hi",
    "!",
]
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU with CUDA (skipped without one)")


def write_tokenizer(
    folder: Path, chat_template: str | None = CHATML, config_extra: dict | None = None
) -> None:
    """A tiny word-level tokenizer.json (its post-processor adds BOS) and tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(SPECIALS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "bos_token": "<s>",
        "eos_token": {"content": "</s>", "special": True},
        "unk_token": "<unk>",
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    config.update(config_extra or {})
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def write_safetensors(path: Path, names: list[str]) -> None:
    """A valid .safetensors file of tiny zero tensors: enough for header readers, no weights."""
    header, offset = {}, 0
    for name in names:
        header[name] = {"dtype": "F16", "shape": [2, 2], "data_offsets": [offset, offset + 8]}
        offset += 8
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * offset)


PLAIN_TENSORS = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "lm_head.weight",
]


def write_model(
    root: Path,
    name: str,
    quantization_config: dict | None = None,
    tensors: list[str] | None = None,
    architectures: list[str] | None = None,
    tokenizer: bool = True,
    weights: bool = True,
    extra_files: dict[str, str] | None = None,
    chat_template: str | None = CHATML,
    config_extra: dict | None = None,
) -> Path:
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": architectures or ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "max_position_embeddings": 2048,
        "vocab_size": len(SPECIALS) + len(WORDS),
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float16",
    }
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    config.update(config_extra or {})
    (folder / "config.json").write_text(json.dumps(config))
    if tokenizer:
        write_tokenizer(folder, chat_template)
    if weights:
        write_safetensors(folder / "model.safetensors", tensors or PLAIN_TENSORS)
    for filename, text in (extra_files or {}).items():
        (folder / filename).write_text(text)
    return folder


@pytest.fixture
def model_writer(tmp_path):
    """write_model bound to a fresh models folder: model_writer(name, **kwargs) -> folder."""
    models = tmp_path / "models"
    models.mkdir()

    def write(name, **kwargs):
        return write_model(models, name, **kwargs)

    write.root = models
    return write
