"""A stand-in for the Hugging Face Hub: a local HTTP server that serves repositories as the
Hub does, so that `llama-api pull` runs its real code (huggingface_hub) with HF_ENDPOINT
pointed here. What huggingface_hub calls, and what the stand-in answers:

- `GET /api/models/{repo}[/revision/{rev}]?blobs=true`: `id`, `sha` (the commit) and
  `siblings` with `size`, `blobId` and, for LFS files, `lfs` {`sha256`, `size`, `pointerSize`}.
- `HEAD|GET /{repo}/resolve/{rev}/{file}`: a small file answers 200 with `ETag` (its git
  blob id), `X-Repo-Commit` and `Content-Length`. An LFS file answers 302 to storage on
  another origin (`localhost` instead of `127.0.0.1`), with `X-Repo-Commit`,
  `X-Linked-Etag` (its sha256) and `X-Linked-Size`, as the Hub redirects to its CDN.
- `GET /cdn/{sha256}`: the content, honouring `Range` (206 with `Content-Range`).
- Errors carry `X-Error-Code` (`RepoNotFound`, `GatedRepo`, `RevisionNotFound`,
  `EntryNotFound`), which huggingface_hub turns into its exception classes.

Faults for tests: a file served corrupted, a connection dropped part-way, a download that
stalls part-way until the test lets it go. Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin")


@dataclass
class HubFile:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def blob_id(self) -> str:
        """git's object id of the file (LFS files: of their pointer; here, of the content)."""
        return hashlib.sha1(b"blob %d\0" % len(self.content) + self.content).hexdigest()


@dataclass
class HubRepo:
    files: dict[str, HubFile]
    commit: str
    token: str | None = None  # gated: only this bearer token gets in


@dataclass
class Fault:
    kind: str          # "corrupt", "drop" (close the connection), "stall" (wait for release)
    after: int = 0     # bytes sent before the fault
    times: int = 1     # how many downloads it hits
    released: threading.Event = field(default_factory=threading.Event)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class HubStandIn:
    """`with HubStandIn() as hub: hub.add_repo(...)`; then HF_ENDPOINT=hub.endpoint."""

    def __init__(self):
        self.repos: dict[str, HubRepo] = {}
        self.faults: dict[str, Fault] = {}  # by sha256 of the content
        self.requests: list[Seen] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.cdn = f"http://localhost:{self.port}/cdn"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for fault in self.faults.values():
            fault.released.set()
        self.server.shutdown()
        self.server.server_close()

    # -- set up ----------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes], token: str | None = None) -> HubRepo:
        commit = hashlib.sha1(repo_id.encode() + b"".join(files.values())).hexdigest()
        repo = HubRepo({name: HubFile(data, name.endswith(LFS_SUFFIXES))
                        for name, data in files.items()}, commit, token)
        self.repos[repo_id] = repo
        return repo

    def fault(self, content: bytes, kind: str, after: int = 0, times: int = 1) -> Fault:
        """Serve `content` with a fault: "corrupt", "drop" or "stall" after `after` bytes."""
        fault = Fault(kind, after, times)
        self.faults[hashlib.sha256(content).hexdigest()] = fault
        return fault

    def downloads(self) -> list[Seen]:
        """The GETs of file content (not of metadata)."""
        return [r for r in self.requests if r.method == "GET" and not r.path.startswith("/api/")]

    # -- serving ---------------------------------------------------------------------------

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: tests read `hub.requests` instead
                pass

            def do_GET(self):
                hub._serve(self, body=True)

            def do_HEAD(self):
                hub._serve(self, body=False)

        return Handler

    def _serve(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        url = urlsplit(request.path)
        path = unquote(url.path)
        self.requests.append(Seen(request.command, request.path,
                                  {k.lower(): v for k, v in request.headers.items()}))
        api = re.fullmatch(r"/api/models/(.+?)(?:/revision/([^/]+))?", path)
        resolve = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
        cdn = re.fullmatch(r"/cdn/([0-9a-f]{64})", path)
        if api:
            self._model_info(request, api.group(1), api.group(2) or "main",
                             "blobs" in parse_qs(url.query))
        elif resolve:
            self._resolve(request, *resolve.groups(), body=body)
        elif cdn:
            self._content(request, cdn.group(1), body=body)
        else:
            error(request, 404, "EntryNotFound", f"no route {path}")

    def _repo(self, request, repo_id: str, revision: str) -> HubRepo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            error(request, 401, "RepoNotFound", "Repository not found")
            return None
        if repo.token is not None and request.headers.get("Authorization") != f"Bearer {repo.token}":
            error(request, 401, "GatedRepo", f"Access to model {repo_id} is restricted.")
            return None
        if revision not in ("main", repo.commit):
            error(request, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo

    def _model_info(self, request, repo_id: str, revision: str, blobs: bool) -> None:
        repo = self._repo(request, repo_id, unquote(revision))
        if repo is None:
            return
        siblings = []
        for name, hub_file in repo.files.items():
            sibling = {"rfilename": name}
            if blobs:
                sibling.update(size=len(hub_file.content), blobId=hub_file.blob_id)
                if hub_file.lfs:
                    sibling["lfs"] = {"size": len(hub_file.content), "sha256": hub_file.sha256,
                                      "pointerSize": 134}
            siblings.append(sibling)
        info = {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                "gated": "manual" if repo.token else False, "siblings": siblings}
        send(request, 200, json.dumps(info).encode(), {"Content-Type": "application/json"})

    def _resolve(self, request, repo_id: str, revision: str, name: str, body: bool) -> None:
        repo = self._repo(request, repo_id, revision)
        if repo is None:
            return
        hub_file = repo.files.get(name)
        headers = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if hub_file is None:
            error(request, 404, "EntryNotFound", f"{name} does not exist", headers)
        elif hub_file.lfs:
            send(request, 302, b"", {**headers, "Location": f"{self.cdn}/{hub_file.sha256}",
                                     "ETag": f'"{hub_file.blob_id}"',
                                     "X-Linked-Etag": f'"{hub_file.sha256}"',
                                     "X-Linked-Size": str(len(hub_file.content))})
        else:
            self._send_content(request, hub_file, {**headers, "ETag": f'"{hub_file.blob_id}"'}, body)

    def _content(self, request, sha256: str, body: bool) -> None:
        for repo in self.repos.values():
            for hub_file in repo.files.values():
                if hub_file.sha256 == sha256:
                    self._send_content(request, hub_file, {"ETag": f'"{sha256}"'}, body)
                    return
        error(request, 404, "EntryNotFound", "no such object")

    def _send_content(self, request, hub_file: HubFile, headers: dict, body: bool) -> None:
        data = hub_file.content
        fault = self.faults.get(hub_file.sha256)
        if fault is not None and body and fault.times > 0:
            fault.times -= 1
        else:
            fault = None
        if fault is not None and fault.kind == "corrupt":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        status = 200
        if ranged:
            start = int(ranged.group(1))
            end = int(ranged.group(2)) + 1 if ranged.group(2) else len(data)
            if start >= len(data):
                error(request, 416, None, "range not satisfiable",
                      {"Content-Range": f"bytes */{len(data)}"})
                return
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            data, status = data[start:end], 206
        if fault is None or fault.kind == "corrupt":
            send(request, status, data if body else b"", headers, length=len(data))
            return
        # drop or stall: promise all of it, send part, then stop
        cut = max(fault.after - start, 0)
        send_head(request, status, {**headers, "Content-Length": str(len(data))})
        try:
            request.wfile.write(data[:cut])
            request.wfile.flush()
            if fault.kind == "stall":
                fault.released.wait(timeout=60)
        except OSError:
            pass  # the client went away (a test killed it)
        request.close_connection = True
        try:
            request.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def send_head(request, status: int, headers: dict) -> None:
    request.send_response(status)
    for key, value in headers.items():
        request.send_header(key, value)
    request.end_headers()


def send(request, status: int, data: bytes, headers: dict, length: int | None = None) -> None:
    send_head(request, status, {**headers, "Content-Length": str(len(data) if length is None else length)})
    if data:
        request.wfile.write(data)


def error(request, status: int, code: str | None, message: str, headers: dict | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    extra = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
    send(request, status, body if request.command != "HEAD" else b"",
         {"Content-Type": "application/json", **extra, **(headers or {})}, length=len(body))
