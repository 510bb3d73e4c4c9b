"""Load option parsing and validation (before any GPU work)."""

from __future__ import annotations

import pytest

from llama_api import errors
from llama_api_exllama.options import DEFAULT_BATCH_SIZE, parse_options


def test_defaults_follow_the_model_capped():
    opts = parse_options({}, "exllamav2", model_max_seq_len=2048)
    assert (opts.max_seq_len, opts.cache_size, opts.cache_type) == (2048, 2048, "fp16")
    assert opts.autosplit and opts.gpu_split is None
    assert opts.max_batch_size == DEFAULT_BATCH_SIZE
    assert parse_options({}, "exllamav3", model_max_seq_len=131072).max_seq_len == 8192
    assert parse_options({}, "exllamav3", model_max_seq_len=None).max_seq_len == 8192


def test_cache_size_rounds_up_to_pages_and_must_hold_one_request():
    opts = parse_options({"max_seq_len": 1000, "cache_size": 3000}, "exllamav2")
    assert (opts.max_seq_len, opts.cache_size) == (1000, 3072)
    assert parse_options({"max_seq_len": 1000}, "exllamav2").cache_size == 1024
    with pytest.raises(errors.ModelLoadError, match="smaller than max_seq_len"):
        parse_options({"max_seq_len": 4096, "cache_size": 2048}, "exllamav2")


@pytest.mark.parametrize(
    "backend,good,bad",
    [
        ("exllamav2", ["fp16", "q8", "q6", "q4", "FP16"], ["q2", "q5", "fp8", "8bit"]),
        ("exllamav3", ["fp16", "q2", "q5", "q8"], ["q9", "q1", "fp8"]),
    ],
)
def test_cache_types(backend, good, bad):
    for value in good:
        assert parse_options({"cache_type": value}, backend).cache_type == value.lower()
    for value in bad:
        with pytest.raises(errors.ModelLoadError, match="option cache_type"):
            parse_options({"cache_type": value}, backend)


def test_gpu_split_forms():
    assert parse_options({"gpu_split": "20, 24"}, "exllamav2").gpu_split == [20.0, 24.0]
    assert parse_options({"gpu_split": [12, 0]}, "exllamav3").gpu_split == [12.0, 0.0]
    assert parse_options({"gpu_split": 8}, "exllamav2").gpu_split == [8.0]
    assert parse_options({"gpu_split": "auto"}, "exllamav2").autosplit
    assert parse_options({"autosplit": True, "reserve_vram": 1.5}, "exllamav2").reserve_vram == [
        1.5
    ]
    for bad in (
        {"gpu_split": "a,b"},
        {"gpu_split": [-1]},
        {"gpu_split": [0, 0]},
        {"gpu_split": [8], "autosplit": True},
        {"autosplit": False},
        {"gpu_split": [8], "reserve_vram": 1},
    ):
        with pytest.raises(errors.ModelLoadError):
            parse_options(bad, "exllamav2")


def test_rope_overrides_are_exllamav2_only():
    opts = parse_options({"rope_scale": 2, "rope_alpha": 2.5}, "exllamav2")
    assert (opts.rope_scale, opts.rope_alpha) == (2.0, 2.5)
    with pytest.raises(errors.ModelLoadError, match="rope_alpha: exllamav3"):
        parse_options({"rope_alpha": 2.5}, "exllamav3")
    with pytest.raises(errors.ModelLoadError, match="option rope_scale"):
        parse_options({"rope_scale": 0}, "exllamav2")


def test_slots_batch_size_and_chunk():
    assert parse_options({"max_batch_size": 16}, "exllamav2").max_batch_size == 16
    assert parse_options({"slots": "4"}, "exllamav2").max_batch_size == 4
    assert parse_options({}, "exllamav2", slots=3).max_batch_size == 3
    assert parse_options({"max_chunk_size": 1000}, "exllamav2").max_chunk_size == 1024
    with pytest.raises(errors.ModelLoadError, match="disagree"):
        parse_options({"slots": 2, "max_batch_size": 4}, "exllamav2")
    with pytest.raises(errors.ModelLoadError, match="option max_batch_size"):
        parse_options({"max_batch_size": 0}, "exllamav2")
    with pytest.raises(errors.ModelLoadError, match="option max_seq_len"):
        parse_options({"max_seq_len": "long"}, "exllamav2")


def test_unknown_options_are_named():
    with pytest.raises(errors.ModelLoadError) as info:
        parse_options({"n_gpu_layers": 99}, "exllamav2")
    assert "unknown exllama option(s) n_gpu_layers" in info.value.message
    assert info.value.param == "n_gpu_layers"
    assert info.value.status == 503


def test_warmup_and_chat_template():
    opts = parse_options({"warmup": "false", "chat_template": "{{ messages }}"}, "exllamav3")
    assert opts.warmup is False and opts.chat_template == "{{ messages }}"
    with pytest.raises(errors.ModelLoadError):
        parse_options({"chat_template": ""}, "exllamav3")
