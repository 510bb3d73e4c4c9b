"""The web page as the server serves it (in-process, no browser): the page for browsers and
the JSON index for API clients at `/`, its files under a versioned prefix with long cache
lifetimes and a strict CSP, `--no-ui`; the committed library files are the lockfile's, and
the whole page stays under 400 KB gzipped; /admin/requests lists recent requests without
their text."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

from support import chat

from llama_api.api.web import ROOT, Assets

WEB_SOURCES = Path(__file__).resolve().parent.parent / "core" / "web"
HTML = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def test_browsers_get_the_page_and_api_clients_the_json_index(shared_client):
    page = shared_client.get("/", headers=HTML)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>llama-api</title>" in page.text
    assert shared_client.get("/").json()["api"] == "/v1"
    assert shared_client.head("/", headers=HTML).content == b""


def test_the_page_allows_no_inline_script_and_no_other_origin(shared_client):
    page = shared_client.get("/", headers=HTML)
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "'unsafe-inline'" not in csp
    assert "connect-src 'self'" in csp and "default-src 'self'" in csp
    assert "http" not in csp  # no other origin
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)  # every script is a file
    assert page.headers["cache-control"] == "no-cache"


def test_page_files_have_versioned_addresses_cached_for_a_year(shared_client):
    page = shared_client.get("/", headers=HTML).text
    script = re.search(r'src="(/ui/[0-9a-f]{12}/js/main\.js)"', page).group(1)
    answer = shared_client.get(script)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/javascript")
    assert "immutable" in answer.headers["cache-control"]
    assert "max-age=31536000" in answer.headers["cache-control"]
    stale = script.replace(script.split("/")[2], "000000000000")
    assert shared_client.get(stale).status_code == 404
    assert shared_client.get(script.replace("js/main.js", "../api/web.py")).status_code == 404


def test_no_ui_leaves_the_json_index_alone(start_app):
    with start_app(ui=False) as client:
        assert client.get("/", headers=HTML).json()["api"] == "/v1"
        assert client.get("/ui/x/js/main.js").status_code == 404


def test_the_page_needs_no_key_but_its_calls_do(start_app):
    with start_app(api_keys=["secret"]) as client:
        assert client.get("/", headers=HTML).status_code == 200
        assert client.get("/v1/models").status_code == 401


def test_the_committed_libraries_are_the_lockfiles_packages():
    """`make web` copies them from node_modules (npm ci of core/web/package-lock.json)."""
    manifest = json.loads((ROOT / "vendor" / "manifest.json").read_text())
    lock = json.loads((WEB_SOURCES / "package-lock.json").read_text())["packages"]
    for name, version in manifest["packages"].items():
        assert lock[f"node_modules/{name}"]["version"] == version, name
    for target, entry in manifest["files"].items():
        committed = (ROOT / "vendor" / target).read_bytes()
        assert hashlib.sha256(committed).hexdigest() == entry["sha256"], target
        built = WEB_SOURCES / "node_modules" / entry["package"] / entry["source"]
        if built.exists():  # after `npm ci`: the very bytes of the package
            assert built.read_bytes() == committed, target


def test_the_whole_page_is_under_400_kb_gzipped():
    total = sum(len(gzip.compress(data, 9)) for data in Assets.read().files.values())
    print(f"\nweb page: {total / 1024:.0f} KB gzipped")
    assert total <= 400 * 1024


def test_recent_requests_show_route_model_and_tokens_but_no_text(shared_client):
    assert chat(shared_client, "fast", content="secret words here").status_code == 200
    shared_client.get("/health")
    requests = shared_client.get("/admin/requests").json()["requests"]
    latest = requests[0]
    assert latest["route"] == "/v1/chat/completions" and latest["model"] == "fast"
    assert latest["status"] == 200 and latest["completion_tokens"] > 0
    assert latest["seconds"] > 0 and latest["ttft"] is not None
    assert all(r["route"] != "/health" for r in requests)  # probes stay out
    assert "secret" not in json.dumps(requests)


def test_recent_requests_keep_the_last_two_hundred():
    from llama_api.api.activity import RecentRequests

    ring = RecentRequests()
    for n in range(250):
        ring.add("POST", "/v1/embeddings", 200, "m", n, 0, None, 0.1)
    newest = ring.newest_first()
    assert len(newest) == 200 and newest[0]["prompt_tokens"] == 249
