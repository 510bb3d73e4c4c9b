"""API keys and admin keys: read from the command line, a file and the environment (a key
file that can't be read stops the start), never written to the log, and kept out of the
workers' environment (which keeps what a backend needs, such as HF_TOKEN). Which routes take
which key: test_errors.py, test_admin.py, test_hostile_input.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest


def test_api_keys_come_from_the_flag_a_file_and_the_environment(start_server, tmp_path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# the operators' keys\nsk-file-1\n\n  sk-file-2  \n")
    keys = ["sk-flag", "sk-file-1", "sk-file-2", "sk-env-1", "sk-env-2"]
    with start_server("--api-key", "sk-flag", "--api-key-file", str(key_file),
                      env={"LLAMA_API_KEYS": "sk-env-1, sk-env-2,"}) as server:
        for key in keys:
            reply = httpx.get(server.v1 + "/models", headers={"Authorization": f"Bearer {key}"},
                              timeout=30)
            assert reply.status_code == 200, key
        for header in ({}, {"Authorization": "Bearer # the operators' keys"}):
            assert httpx.get(server.v1 + "/models", headers=header, timeout=30).status_code == 401
    log = server.log()
    assert "5 key(s)" in log
    assert not [key for key in keys if key in log], "a key was written to the log"


def test_a_missing_key_file_is_refused_at_start(tmp_path):
    missing = tmp_path / "no-such-keys.txt"
    result = subprocess.run([sys.executable, "-m", "llama_api", "serve", "--api-key-file",
                             str(missing)], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and str(missing) in result.stderr


def worker_environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_admin_keys_from_a_file_and_the_environment_and_no_secrets_in_workers(
        start_server, tmp_path):
    key_file = tmp_path / "admin-keys"
    key_file.write_text("# operators\nfile-admin-key\n")
    env = {"LLAMA_API_KEYS": "api-key", "LLAMA_API_ADMIN_KEY": "env-admin-key",
           "HF_TOKEN": "hf-token"}
    with start_server("--admin-key-file", str(key_file), env=env) as server:
        def admin(key):
            return httpx.get(server.url + "/admin/models",
                             headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert admin("api-key").status_code == 403
        assert admin("file-admin-key").status_code == 200
        assert admin("env-admin-key").status_code == 200
        loaded = httpx.post(server.url + "/admin/models/fast/load", timeout=60,
                            headers={"Authorization": "Bearer env-admin-key"})
        assert loaded.status_code == 200, loaded.text
        environment = worker_environment(loaded.json()["pid"])
    assert "LLAMA_API_KEYS" not in environment and "LLAMA_API_ADMIN_KEY" not in environment
    assert environment.get("HF_TOKEN") == "hf-token"  # a backend may download from the Hub


def test_an_unreadable_admin_key_file_is_refused_at_start(tmp_path, capsys):
    from llama_api.cli.main import main

    assert main(["serve", "--admin-key-file", str(tmp_path / "missing")]) == 2
    assert "--admin-key-file" in capsys.readouterr().err
