"""`/`: the web page (its files in `llama_api/web/`) for browsers, the JSON index for API clients.

The page's files are served under `/ui/<version>/`, where the version is a digest of every
file: a new release changes every address, so the files can be cached for a year while the
page itself (`/`) is revalidated each time. The page holds no data and needs no key to load;
every call it makes goes through the API's own routes and guards. The Content-Security-Policy
allows scripts, styles and connections from this origin alone, and no inline script.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from litestar import Request, Response, route
from litestar.params import FromPath

from llama_api import errors
from llama_api.api.http import GET_OR_HEAD

ROOT = Path(__file__).resolve().parent.parent / "web"
PREFIX = "/ui"

CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

# Images: pasted or picked files are shown as data: or blob: URLs before they are sent.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer"}

INDEX = {"name": "llama-api", "api": "/v1", "health": "/health", "schema": "/schema"}


@dataclass(frozen=True)
class Assets:
    """The page's files as they were when the server started, and their version."""

    files: dict[str, bytes]  # path under ROOT -> bytes
    version: str

    @classmethod
    def read(cls, root: Path = ROOT) -> Assets:
        files = {path.relative_to(root).as_posix(): path.read_bytes()
                 for path in sorted(root.rglob("*"))
                 if path.is_file() and path.suffix in CONTENT_TYPES | {".html": ""}}
        digest = hashlib.sha256()
        for name, data in files.items():
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return cls(files, digest.hexdigest()[:12])

    def page(self) -> bytes:
        return self.files["index.html"].replace(b"{{ASSETS}}",
                                                f"{PREFIX}/{self.version}".encode())


def wants_html(request: Request) -> bool:
    """Browsers ask for text/html; API clients (curl, SDKs, probes) don't."""
    return "text/html" in request.headers.get("accept", "")


def web_routes(enabled: bool) -> list:
    """The index route, serving the page to browsers when `enabled` (`serve --no-ui` turns
    it off), and the route of the page's files."""
    if not enabled:
        @route("/", http_method=GET_OR_HEAD, opt={"public": True}, summary="What this server is")
        async def index() -> dict:
            return INDEX

        return [index]

    assets = Assets.read()
    page = assets.page()

    @route("/", http_method=GET_OR_HEAD, opt={"public": True}, summary="What this server is",
           description="The web page for a browser (`Accept: text/html`), else this JSON.")
    async def index_or_page(request: Request) -> Response:
        if wants_html(request):
            return Response(page, media_type="text/html",
                            headers={**SECURITY_HEADERS, "Cache-Control": "no-cache",
                                     "Vary": "Accept"})
        return Response(INDEX, headers={"Vary": "Accept"})

    @route(PREFIX + "/{version:str}/{path:path}", http_method=GET_OR_HEAD,
           opt={"public": True}, include_in_schema=False)
    async def asset(version: FromPath[str], path: FromPath[str]) -> Response:
        data = assets.files.get(path.lstrip("/"))
        if version != assets.version or data is None or path.endswith(".html"):
            raise errors.HTTPRefusal(f"No page file {PREFIX}/{version}{path}.", status=404)
        return Response(data, media_type=CONTENT_TYPES[Path(path).suffix],
                        headers={**SECURITY_HEADERS,
                                 "Cache-Control": "public, max-age=31536000, immutable"})

    return [index_or_page, asset]
