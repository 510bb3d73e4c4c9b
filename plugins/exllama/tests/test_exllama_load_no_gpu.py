"""The no-GPU path: load_model fails with a precise ModelLoadError (HTTP 503), never pretends."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import llama_api_exllama as plugin
from llama_api import errors
from llama_api.contract.records import LoadContext, ModelSpec
from llama_api.workers import protocol
from llama_api_exllama.cuda import NO_GPU

torch = pytest.importorskip("torch")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


def spec_for(folder, backend, **options):
    return ModelSpec(id=folder.name, backend=backend, path=str(folder), options=options)


def expected_no_gpu_message():
    build = (
        "is a CPU-only build"
        if torch.version.cuda is None
        else f"(CUDA {torch.version.cuda}) sees no CUDA device"
    )
    return f"{NO_GPU} (torch {torch.__version__} {build})"


@no_cuda
@pytest.mark.parametrize(
    "quant,backend",
    [
        ("gptq", "exllamav2"),
        ("exl2", "exllamav2"),
        ("exl3", "exllamav3"),
        (None, "exllamav3"),
        (None, "exllamav2"),
    ],
)
def test_no_gpu_path_load_model_raises_no_cuda_device(model_writer, quant, backend):
    qcfg = {"quant_method": quant, "bits": 4} if quant else None
    folder = model_writer(f"m-{quant}", quantization_config=qcfg)
    with pytest.raises(errors.ModelLoadError) as info:
        plugin.load_model(spec=spec_for(folder, backend), context=LoadContext())
    assert info.value.message == expected_no_gpu_message()
    assert info.value.message.startswith("no CUDA device: exllama needs an NVIDIA GPU")
    assert info.value.status == 503
    assert info.value.code == "model_load_failed"


@no_cuda
def test_no_gpu_path_through_the_core_worker_process(model_writer):
    """The real worker subprocess answers Load with LoadFailed(ModelLoadError) and stays up."""
    folder = model_writer("tiny")
    env = dict(os.environ, LLAMA_API_WORKER_LOG_LEVEL="WARNING")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_api.workers.child", "exllama"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        proc.stdin.write(protocol.encode(protocol.Load(spec=spec_for(folder, "exllamav3"))))
        proc.stdin.flush()
        header = proc.stdout.read(protocol.HEADER.size)
        (length,) = protocol.HEADER.unpack(header)
        reply = protocol.from_worker_decoder.decode(proc.stdout.read(length))
        assert isinstance(reply, protocol.LoadFailed)
        assert reply.kind == "ModelLoadError"
        assert errors.ERROR_KINDS[reply.kind].status == 503
        assert reply.message == expected_no_gpu_message()
        assert proc.poll() is None  # still serving
        proc.stdin.write(protocol.encode(protocol.Shutdown()))
        proc.stdin.flush()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def cuda_visible(monkeypatch):
    """Pretend torch sees a GPU, to reach the library import on a CPU machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def fake_library(tmp_path, monkeypatch, name, body):
    root = tmp_path / "fake_site"
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_library_kernel_build_failure_is_reported(
    model_writer, tmp_path, monkeypatch, cuda_visible
):
    fake_library(
        tmp_path,
        monkeypatch,
        "exllamav2",
        "raise OSError('CUDA_HOME environment variable is not "
        "set. Please set it to your CUDA install root.')\n",
    )
    folder = model_writer("g", quantization_config={"quant_method": "gptq", "bits": 4})
    with pytest.raises(errors.ModelLoadError) as info:
        plugin.load_model(spec=spec_for(folder, "exllamav2"), context=LoadContext())
    assert info.value.message == (
        "exllamav2 failed to build its CUDA kernels: OSError: CUDA_HOME environment "
        "variable is not set. Please set it to your CUDA install root."
    )


def test_library_not_installed(model_writer, monkeypatch, cuda_visible):
    monkeypatch.setitem(
        sys.modules, "exllamav3", None
    )  # makes `import exllamav3` fail as if absent
    folder = model_writer("u")
    with pytest.raises(
        errors.ModelLoadError,
        match=r"exllamav3 is not installed: `pip install "
        r"'llama-api-exllama\[v3\]'`",
    ):
        plugin.load_model(spec=spec_for(folder, "exllamav3"), context=LoadContext())


def test_library_dependency_missing(model_writer, tmp_path, monkeypatch, cuda_visible):
    fake_library(tmp_path, monkeypatch, "exllamav3", "import llama_api_no_such_module_xyz\n")
    folder = model_writer("u")
    with pytest.raises(
        errors.ModelLoadError,
        match="a module it needs is missing "
        r"\(llama_api_no_such_module_xyz\)",
    ):
        plugin.load_model(spec=spec_for(folder, "exllamav3"), context=LoadContext())


def test_checks_that_come_before_cuda(model_writer, tmp_path):
    gptq = model_writer("g", quantization_config={"quant_method": "gptq", "bits": 4})
    with pytest.raises(errors.ModelLoadError, match="is gptq, which exllamav3 does not load"):
        plugin.load_model(spec=spec_for(gptq, "exllamav3"), context=LoadContext())
    exl3 = model_writer("e", quantization_config={"quant_method": "exl3", "bits": 4})
    with pytest.raises(errors.ModelLoadError, match="is exl3, which exllamav2 does not load"):
        plugin.load_model(spec=spec_for(exl3, "exllamav2"), context=LoadContext())
    with pytest.raises(errors.ModelLoadError, match="unknown exllama option"):
        plugin.load_model(spec=spec_for(gptq, "exllamav2", n_ctx=4096), context=LoadContext())
    with pytest.raises(errors.ModelLoadError, match="no readable config.json"):
        plugin.load_model(spec=spec_for(tmp_path / "gone", "exllamav2"), context=LoadContext())
