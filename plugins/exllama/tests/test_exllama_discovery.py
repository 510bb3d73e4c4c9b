"""Discovery and quantization detection on model folders the tests write (no real weights)."""

from __future__ import annotations

import json

import pytest

from llama_api.workers.plugins import Plugins
from llama_api_exllama import discovery
from llama_api_exllama.discovery import discover, safetensors_keys


def by_id(specs):
    return {spec.id: spec for spec in specs}


def test_gptq_from_quant_method_in_original_gptq_folder(model_writer):
    model_writer(
        "gptq/Llama-2-7B-GPTQ",
        quantization_config={
            "quant_method": "gptq",
            "bits": 4,
            "group_size": 128,
            "desc_act": False,
        },
    )
    (spec,) = discover(model_writer.root)
    assert spec.id == "Llama-2-7B-GPTQ"
    assert spec.backend == "exllamav2"
    assert spec.path == str(model_writer.root / "gptq" / "Llama-2-7B-GPTQ")
    assert spec.meta == {
        "quantization": "gptq",
        "architecture": "LlamaForCausalLM",
        "max_position_embeddings": 2048,
        "bits": 4,
        "format": "safetensors",
        "group_size": 128,
        "desc_act": False,
    }


def test_gptq_from_autogptq_quantize_config(model_writer):
    model_writer(
        "old-gptq", extra_files={"quantize_config.json": json.dumps({"bits": 4, "group_size": 32})}
    )
    (spec,) = discover(model_writer.root)
    assert (spec.backend, spec.meta["quantization"], spec.meta["bits"]) == ("exllamav2", "gptq", 4)


def test_gptq_from_tensor_names(model_writer):
    model_writer(
        "tensors-gptq",
        tensors=[
            "model.layers.0.mlp.up_proj.qweight",
            "model.layers.0.mlp.up_proj.qzeros",
            "model.layers.0.mlp.up_proj.scales",
        ],
    )
    (spec,) = discover(model_writer.root)
    assert (spec.backend, spec.meta["quantization"]) == ("exllamav2", "gptq")


def test_exl2_from_quant_method(model_writer):
    model_writer(
        "m-exl2",
        quantization_config={
            "quant_method": "exl2",
            "version": "0.3.2",
            "bits": 4.65,
            "head_bits": 6,
            "calibration": {"rows": 115, "length": 2048, "dataset": "(default)"},
        },
    )
    (spec,) = discover(model_writer.root)
    assert spec.backend == "exllamav2"
    assert spec.meta["quantization"] == "exl2"
    assert spec.meta["bits"] == 4.65
    assert spec.meta["head_bits"] == 6


def test_exl2_legacy_measurement_json(model_writer):
    model_writer("legacy-exl2", extra_files={"measurement.json": "{}"})
    (spec,) = discover(model_writer.root)
    assert (spec.backend, spec.meta["quantization"], spec.meta["bits"]) == (
        "exllamav2",
        "exl2",
        None,
    )


def test_exl2_legacy_tensor_names(model_writer):
    model_writer(
        "legacy-exl2-tensors",
        tensors=["model.layers.0.mlp.up_proj.q_weight", "model.layers.0.mlp.up_proj.q_invperm"],
    )
    (spec,) = discover(model_writer.root)
    assert (spec.backend, spec.meta["quantization"]) == ("exllamav2", "exl2")


def test_exl3_from_quant_method(model_writer):
    model_writer(
        "m-exl3",
        quantization_config={
            "quant_method": "exl3",
            "version": "1.6.5",
            "bits": 3.0,
            "head_bits": 6,
        },
    )
    (spec,) = discover(model_writer.root)
    assert (spec.backend, spec.meta["quantization"], spec.meta["bits"]) == (
        "exllamav3",
        "exl3",
        3.0,
    )


def test_exl3_from_quantization_config_json_and_trellis(model_writer):
    model_writer(
        "exl3-file",
        extra_files={"quantization_config.json": json.dumps({"quant_method": "exl3", "bits": 4.0})},
    )
    model_writer(
        "exl3-trellis",
        tensors=["model.layers.0.mlp.up_proj.trellis", "model.layers.0.mlp.up_proj.suh"],
    )
    specs = by_id(discover(model_writer.root))
    assert specs["exl3-file"].meta["quantization"] == "exl3"
    assert specs["exl3-file"].meta["bits"] == 4.0
    assert specs["exl3-trellis"].meta["quantization"] == "exl3"
    assert {s.backend for s in specs.values()} == {"exllamav3"}


def test_unquantized_goes_to_exllamav3(model_writer):
    model_writer("tiny-llama")
    (spec,) = discover(model_writer.root)
    assert spec.backend == "exllamav3"
    assert spec.meta["quantization"] == "none"
    assert spec.meta["bits"] == 16.0


def test_foreign_and_incomplete_folders_are_skipped(model_writer):
    model_writer("awq", quantization_config={"quant_method": "awq", "bits": 4})
    model_writer("bert", architectures=["BertModel"])
    model_writer("no-tokenizer", tokenizer=False)
    model_writer("no-weights", weights=False)
    model_writer("good")
    (model_writer.root / "gguf-only").mkdir()
    (model_writer.root / "gguf-only" / "model.gguf").write_bytes(b"GGUF")
    (model_writer.root / "broken").mkdir()
    (model_writer.root / "broken" / "config.json").write_text("{not json")
    assert [s.id for s in discover(model_writer.root)] == ["good"]


def test_text_config_context_length(model_writer):
    model_writer(
        "vl",
        config_extra={
            "max_position_embeddings": None,
            "text_config": {"max_position_embeddings": 32768},
        },
    )
    (spec,) = discover(model_writer.root)
    assert spec.meta["max_position_embeddings"] == 32768


def test_duplicate_names_get_their_relative_path(model_writer):
    model_writer("a/same")
    model_writer("b/same")
    assert sorted(s.id for s in discover(model_writer.root)) == ["b/same", "same"]


def test_symlink_loops_are_walked_once(model_writer):
    model_writer("real/m")
    (model_writer.root / "real" / "loop").symlink_to(model_writer.root)
    assert [s.id for s in discover(model_writer.root)] == ["m"]


def test_missing_models_dir(tmp_path):
    assert discover(tmp_path / "nope") == []


def test_safetensors_header_reader(model_writer, tmp_path):
    folder = model_writer("x", tensors=["a.weight", "b.qweight"])
    assert safetensors_keys(folder / "model.safetensors") == ["a.weight", "b.qweight"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 8 + b"{}")
    assert safetensors_keys(bad) == []


def test_hooks_through_the_entry_point(model_writer):
    model_writer("gptq/g", quantization_config={"quant_method": "gptq", "bits": 4})
    model_writer("u")
    plugins = Plugins(only="exllama")
    assert plugins.backends() == {"exllamav2": "exllama", "exllamav3": "exllama"}
    (specs,) = plugins.hook.discover_models(models_dir=model_writer.root)
    assert {(s.id, s.backend) for s in specs} == {("g", "exllamav2"), ("u", "exllamav3")}


def test_entry_module_is_import_light():
    import subprocess
    import sys

    code = (
        "import sys, llama_api_exllama; "
        "print(sorted(m for m in ('torch', 'exllamav2', 'exllamav3', 'tokenizers', 'jinja2') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "method,backend",
    [("gptq", "exllamav2"), ("exl2", "exllamav2"), ("exl3", "exllamav3"), ("GPTQ", "exllamav2")],
)
def test_backend_table(model_writer, method, backend):
    model_writer("m", quantization_config={"quant_method": method, "bits": 4})
    assert discovery.discover(model_writer.root)[0].backend == backend
