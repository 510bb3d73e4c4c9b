"""`llama-api pull` against a local stand-in for the Hugging Face Hub (HF_ENDPOINT).

Every pull is a real `llama-api pull` subprocess running huggingface_hub's code.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hub_standin import HubStandIn

from llama_api.testing import wait_for

MiB = 1 << 20
CHUNK = 10 * MiB  # huggingface_hub writes what it downloads in pieces of this size


@pytest.fixture
def hub():
    with HubStandIn() as standin:
        yield standin


@pytest.fixture
def models(tmp_path) -> Path:
    return tmp_path / "models"


# Not handed to the pull: a token of the machine's, and an offline switch this test process
# may have picked up (the embeddings backend sets one where another test module loads a model
# in this process), which would keep the pull from the stand-in Hub.
LEFT_OUT = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def pull_command(hub, models, *args, token=None):
    env = {k: v for k, v in os.environ.items() if k not in LEFT_OUT}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(models.parent / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1")
    if token is not None:
        env["HF_TOKEN"] = token
    return [sys.executable, "-m", "llama_api", "pull", *args, "--models-dir", str(models)], env


def pull(hub, models, *args, token=None) -> subprocess.CompletedProcess:
    command, env = pull_command(hub, models, *args, token=token)
    return subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=120)


def leftovers(models: Path) -> list[Path]:
    return sorted((models / ".pull").rglob("*")) if (models / ".pull").exists() else []


def gguf_repo(hub):
    return hub.add_repo("acme/tiny-GGUF", {
        "README.md": b"# tiny\n",
        "tiny.Q4_K_M.gguf": b"GGUF" + os.urandom(3000),
        "tiny.Q8_0.gguf": b"GGUF" + os.urandom(5000),
        "tiny.IQ4_K_M.gguf": b"GGUF" + os.urandom(1000),
    })


def test_pull_one_gguf_file_by_name(hub, models):
    repo = gguf_repo(hub)
    result = pull(hub, models, "acme/tiny-GGUF", "tiny.Q8_0.gguf")
    assert result.returncode == 0, result.stderr
    assert (models / "tiny.Q8_0.gguf").read_bytes() == repo.files["tiny.Q8_0.gguf"].content
    assert sorted(p.name for p in models.iterdir()) == ["tiny.Q8_0.gguf"]  # no staging left
    assert "saved" in result.stdout
    # A second pull finds the file in place and checks it instead of downloading again.
    before = len(hub.downloads())
    again = pull(hub, models, "acme/tiny-GGUF", "tiny.Q8_0.gguf")
    assert again.returncode == 0 and "already downloaded" in again.stderr
    assert len(hub.downloads()) == before


def test_quant_picks_the_file_and_ambiguity_is_refused_with_the_list(hub, models):
    repo = gguf_repo(hub)
    result = pull(hub, models, "acme/tiny-GGUF", "--quant", "q4_k_m")
    assert result.returncode == 0, result.stderr
    assert (models / "tiny.Q4_K_M.gguf").read_bytes() == repo.files["tiny.Q4_K_M.gguf"].content
    assert not (models / "tiny.IQ4_K_M.gguf").exists()  # IQ4_K_M is another quantization

    several = pull(hub, models, "acme/tiny-GGUF")
    assert several.returncode == 2
    assert "--quant" in several.stderr
    for name in ("tiny.Q4_K_M.gguf", "tiny.Q8_0.gguf", "tiny.IQ4_K_M.gguf"):
        assert name in several.stderr

    none = pull(hub, models, "acme/tiny-GGUF", "--quant", "Q4_K")  # a prefix is not a match
    assert none.returncode == 2 and "Q4_K" in none.stderr and "tiny.Q8_0.gguf" in none.stderr


def test_quant_of_a_split_gguf_downloads_every_part(hub, models):
    hub.add_repo("acme/big-GGUF", {
        "Q4_K_M/big-Q4_K_M-00001-of-00002.gguf": b"GGUF" + os.urandom(2000),
        "Q4_K_M/big-Q4_K_M-00002-of-00002.gguf": os.urandom(2000),
        "big-Q8_0.gguf": b"GGUF" + os.urandom(4000),
    })
    result = pull(hub, models, "acme/big-GGUF", "--quant", "Q4_K_M")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in models.glob("*.gguf")) == [
        "big-Q4_K_M-00001-of-00002.gguf", "big-Q4_K_M-00002-of-00002.gguf"]


def test_pull_a_whole_folder_for_a_repo_without_gguf(hub, models):
    repo = hub.add_repo("acme/mini-encoder", {
        ".gitattributes": b"*.safetensors filter=lfs\n",
        "config.json": b'{"model_type": "bert"}',
        "tokenizer.json": b'{"version": "1.0"}',
        "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
        "model.safetensors": os.urandom(20000),
        "pytorch_model.bin": os.urandom(20000),  # the same weights again, for old loaders
        "onnx/model.onnx": os.urandom(20000),
    })
    result = pull(hub, models, "acme/mini-encoder")
    assert result.returncode == 0, result.stderr
    folder = models / "mini-encoder"
    pulled = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert pulled == ["1_Pooling/config.json", "config.json", "model.safetensors", "tokenizer.json"]
    for name in pulled:
        assert (folder / name).read_bytes() == repo.files[name].content
    assert not (models / ".pull").exists()


def test_a_dropped_connection_resumes_where_it_stopped(hub, models):
    content = b"GGUF" + os.urandom(CHUNK + 2 * MiB)
    hub.add_repo("acme/dropped-GGUF", {"dropped.gguf": content})
    hub.fault(content, "drop", after=CHUNK + MiB)
    result = pull(hub, models, "acme/dropped-GGUF")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256((models / "dropped.gguf").read_bytes()).hexdigest() == \
        hashlib.sha256(content).hexdigest()
    ranges = [r.headers.get("range") for r in hub.downloads() if r.path.startswith("/cdn/")]
    assert ranges == [None, f"bytes={CHUNK}-"], ranges  # the second GET asked for the rest only


def test_an_interrupted_pull_resumes_on_the_next_run(hub, models):
    content = b"GGUF" + os.urandom(CHUNK + 2 * MiB)
    hub.add_repo("acme/stalled-GGUF", {"stalled.gguf": content})
    stall = hub.fault(content, "stall", after=CHUNK + MiB)
    command, env = pull_command(hub, models, "acme/stalled-GGUF")
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = models / ".pull" / f"{hashlib.sha256(content).hexdigest()}.part"
    try:
        assert wait_for(lambda: partial.exists() and partial.stat().st_size >= CHUNK, timeout=60)
    finally:
        first.send_signal(signal.SIGKILL)  # no chance to clean up: a power cut, an OOM kill
        first.wait(timeout=10)
        stall.released.set()
    assert not (models / "stalled.gguf").exists()

    second = pull(hub, models, "acme/stalled-GGUF")
    assert second.returncode == 0, second.stderr
    assert "resuming at" in second.stderr
    assert (models / "stalled.gguf").read_bytes() == content
    ranges = [r.headers.get("range") for r in hub.downloads() if r.path.startswith("/cdn/")]
    assert ranges[-1] == f"bytes={CHUNK}-", ranges
    assert leftovers(models) == []


def test_a_corrupt_download_fails_loudly_and_leaves_no_file(hub, models):
    content = b"GGUF" + os.urandom(4000)
    hub.add_repo("acme/corrupt-GGUF", {"corrupt.gguf": content})
    hub.fault(content, "corrupt")
    result = pull(hub, models, "acme/corrupt-GGUF")
    assert result.returncode == 1
    assert "checksum" in result.stderr and hashlib.sha256(content).hexdigest() in result.stderr
    assert "deleted" in result.stderr
    assert not (models / "corrupt.gguf").exists()
    assert leftovers(models) == []
    # The stand-in serves it right the second time: the next run downloads a good file.
    assert pull(hub, models, "acme/corrupt-GGUF").returncode == 0
    assert (models / "corrupt.gguf").read_bytes() == content


def test_a_small_file_is_checked_against_its_git_blob_id(hub, models):
    content = b'{"model_type": "bert"}'
    hub.add_repo("acme/config-only", {"config.json": content})
    hub.fault(content, "corrupt")
    result = pull(hub, models, "acme/config-only", "config.json")
    assert result.returncode == 1 and "git blob id" in result.stderr
    assert not (models / "config.json").exists()


@pytest.mark.parametrize("args", [
    ["../x"], ["acme/../x"], ["acme/tiny-GGUF", "../../outside.gguf"],
    ["acme/tiny-GGUF", "/etc/passwd"],
])
def test_names_that_leave_the_folder_are_refused_before_any_download(hub, models, args):
    gguf_repo(hub)
    result = pull(hub, models, *args)
    assert result.returncode == 2
    assert "repository id" in result.stderr or "unsafe file name" in result.stderr
    assert hub.requests == []


def test_a_hub_file_list_with_a_traversing_name_is_refused(hub, models, tmp_path):
    hub.add_repo("acme/evil-GGUF", {"../evil.gguf": b"GGUF" + os.urandom(100)})
    result = pull(hub, models, "acme/evil-GGUF")
    assert result.returncode == 2 and "unsafe file name" in result.stderr
    assert not (tmp_path / "evil.gguf").exists() and hub.downloads() == []


def test_hf_token_reaches_the_hub_as_a_bearer_header_and_not_the_cdn(hub, models):
    repo = hub.add_repo("acme/gated-GGUF", {"gated.gguf": b"GGUF" + os.urandom(3000)},
                        token="hf_test_token")
    refused = pull(hub, models, "acme/gated-GGUF")
    assert refused.returncode == 1
    assert "gated" in refused.stderr and "HF_TOKEN" in refused.stderr
    assert "hf_test_token" not in refused.stderr

    hub.requests.clear()
    result = pull(hub, models, "acme/gated-GGUF", token="hf_test_token")
    assert result.returncode == 0, result.stderr
    assert (models / "gated.gguf").read_bytes() == repo.files["gated.gguf"].content
    to_hub = [r for r in hub.requests if not r.path.startswith("/cdn/")]
    to_cdn = [r for r in hub.requests if r.path.startswith("/cdn/")]
    assert to_hub and all(r.headers.get("authorization") == "Bearer hf_test_token" for r in to_hub)
    assert to_cdn and all("authorization" not in r.headers for r in to_cdn)
    assert "hf_test_token" not in result.stderr + result.stdout


def test_a_running_server_serves_a_pulled_model_without_restart(hub, start_server, models_dir):
    hub.add_repo("acme/echo-models", {"pulled.echo": b"{}", "looked-up.echo": b"{}"})
    with start_server() as server:
        ids = {m["id"] for m in httpx.get(server.v1 + "/models").json()["data"]}
        assert "pulled" not in ids
        assert pull(hub, models_dir, "acme/echo-models", "pulled.echo").returncode == 0
        ids = {m["id"] for m in httpx.get(server.v1 + "/models").json()["data"]}
        assert "pulled" in ids
        # A name the registry doesn't know makes it look again, without a listing first.
        assert pull(hub, models_dir, "acme/echo-models", "looked-up.echo").returncode == 0
        reply = httpx.post(server.v1 + "/chat/completions", timeout=60, json={
            "model": "looked-up", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == "looked-up"


def test_a_second_pull_of_a_file_being_downloaded_stops_instead_of_corrupting_it(hub, models):
    content = b"GGUF" + os.urandom(CHUNK + 2 * MiB)
    hub.add_repo("acme/busy-GGUF", {"busy.gguf": content})
    stall = hub.fault(content, "stall", after=CHUNK + MiB)
    command, env = pull_command(hub, models, "acme/busy-GGUF")
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert wait_for(lambda: len(hub.downloads()) == 1, timeout=60)
        second = pull(hub, models, "acme/busy-GGUF")
        assert second.returncode == 1 and "another `llama-api pull`" in second.stderr
    finally:
        stall.released.set()  # the first download is cut off here; the first pull retries
        first.wait(timeout=60)
        first.stderr.close()
    assert first.returncode == 0
    assert (models / "busy.gguf").read_bytes() == content
