"""Discovery reads GGUF headers only; the entry module stays import-light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import llama_api_llamacpp as plugin
from llama_api import errors
from llama_api.contract.records import ModelSpec
from llama_api_llamacpp.gguf_meta import GGUFError, read_kv, read_meta


def test_register_backends():
    (info,) = plugin.register_backends()
    assert info.name == "llamacpp"


def test_entry_module_imports_no_heavy_library():
    code = ("import sys, llama_api_llamacpp, pathlib; "
            "llama_api_llamacpp.discover_models(pathlib.Path('.')); "
            "heavy = [m for m in ('llama_cpp', 'numpy', 'gguf', 'jinja2') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_header_meta(tiny_dir):
    meta = read_meta(tiny_dir / "tiny.gguf")
    assert meta["architecture"] == "llama"
    assert meta["context_length"] == 2048
    assert meta["embedding_length"] == 64
    assert meta["chat_template"] is True
    assert meta["kind"] == "chat"
    assert meta["quantization"] == "F32"
    assert meta["embedding"] is False
    assert read_meta(tiny_dir / "plain" / "tiny-base.gguf")["kind"] == "completion"
    embed_meta = read_meta(tiny_dir / "tiny-embed.gguf")
    assert embed_meta["pooling"] == "mean"
    kv = read_kv(tiny_dir / "tiny.gguf")
    assert kv["tokenizer.ggml.tokens"]["array_length"] > 256  # big arrays are skipped


def test_header_of_a_bad_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all, just text" * 4)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_meta(bad)
    truncated = tmp_path / "trunc.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 8 + b"\xff" * 8 + b"\x01")
    with pytest.raises(GGUFError):
        read_meta(truncated)


def test_a_header_cut_inside_its_vocabulary_is_an_error(tiny_path, tmp_path):
    data = tiny_path.read_bytes()
    at = data.index("▁weather".encode())  # a token string in the (skipped) vocabulary array
    for cut in (at - 3, at + 2):  # inside a length, inside a string
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(GGUFError, match="truncated"):
            read_kv(tmp_path / "cut.gguf")


def test_discovery_is_recursive_with_ids_from_file_stems(tiny_dir, tmp_path):
    specs = {spec.id: spec for spec in plugin.discover_models(models_dir=tiny_dir)}
    assert {"tiny", "tiny-base", "tiny-embed"} <= set(specs)
    assert specs["tiny"].backend == "llamacpp"
    assert specs["tiny"].meta["chat_template"] is True
    assert specs["tiny-embed"].options == {"embedding": True}
    assert specs["tiny-base"].path.endswith("tiny-base.gguf")


def test_discovery_lists_broken_files_and_keeps_going(tmp_path, tiny_path):
    (tmp_path / "ggml").mkdir()
    (tmp_path / "ggml" / "broken.gguf").write_bytes(b"garbage")
    (tmp_path / "ok.gguf").write_bytes(tiny_path.read_bytes())
    specs = {spec.id: spec for spec in plugin.discover_models(models_dir=tmp_path)}
    assert "error" in specs["broken"].meta
    assert specs["ok"].meta["architecture"] == "llama"


def test_discovery_of_a_missing_folder_still_offers_smollm2(tmp_path):
    specs = plugin.discover_models(models_dir=tmp_path / "nope")
    ids = [spec.id for spec in specs]
    if plugin.smollm2_path() is None:
        assert ids == []
    else:
        assert ids == [plugin.SMOLLM2_ID]
        assert specs[0].meta["chat_template"] is True


def test_estimate_memory_counts_the_gpu_only_when_the_core_says_there_is_one(
        tiny_spec, monkeypatch):
    """The core tells the hook whether the server has a GPU budget (review #3): the plugin
    never looks for one itself."""
    from llama_api.scheduling import memory as core_memory
    from llama_api.workers.plugins import Plugins
    from llama_api_llamacpp import memory

    monkeypatch.setattr(core_memory, "_nvidia_smi",
                        lambda *args: pytest.fail("the plugin looked for a GPU"))
    host, on_gpu = plugin.estimate_memory(spec=tiny_spec, gpu=False)
    assert on_gpu == 0 and host > memory.RUNTIME_BYTES
    offloaded = plugin.estimate_memory(spec=tiny_spec, gpu=True)
    # n_gpu_layers defaults to every layer: only the libraries stay on the host
    assert offloaded[0] == memory.RUNTIME_BYTES and sum(offloaded) == host
    # as the core asks, through pluggy, of the plugin serving the spec alone
    assert tuple(Plugins().estimate_memory(tiny_spec, True)) == offloaded


def test_bad_file_is_a_load_error_naming_the_file(tmp_path):
    from llama_api.contract.records import LoadContext

    bad = tmp_path / "corrupt-model.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64)
    spec = ModelSpec(id="corrupt", backend="llamacpp", path=str(bad))
    with pytest.raises(errors.ModelLoadError, match="corrupt-model.gguf"):
        plugin.load_model(spec=spec, context=LoadContext())
    missing = ModelSpec(id="gone", backend="llamacpp", path=str(tmp_path / "gone.gguf"))
    with pytest.raises(errors.ModelLoadError, match="gone.gguf"):
        plugin.load_model(spec=missing, context=LoadContext())


def test_truncated_weights_are_a_load_error_naming_the_file(tmp_path, tiny_path):
    from llama_api.contract.records import LoadContext

    data = tiny_path.read_bytes()
    cut = tmp_path / "cut-short.gguf"
    cut.write_bytes(data[: len(data) // 2])  # header intact, tensors missing
    spec = ModelSpec(id="cut", backend="llamacpp", path=str(cut))
    with pytest.raises(errors.ModelLoadError, match="cut-short.gguf"):
        plugin.load_model(spec=spec, context=LoadContext())


def test_missing_llama_cpp_is_a_clear_load_error(tiny_path):
    code = (
        "import sys; sys.modules['llama_cpp'] = None\n"
        "import llama_api_llamacpp as p\n"
        "from llama_api.contract.records import ModelSpec, LoadContext\n"
        "from llama_api.errors import ModelLoadError\n"
        f"spec = ModelSpec(id='t', backend='llamacpp', path={str(tiny_path)!r})\n"
        "try:\n"
        "    p.load_model(spec=spec, context=LoadContext())\n"
        "except ModelLoadError as exc:\n"
        "    print(exc.message)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert "pip install llama-cpp-python" in result.stdout, result.stdout + result.stderr
