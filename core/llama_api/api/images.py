"""Images in requests: where each API's image parts go, and how they are read.

The request normalizers (chat.py, anthropic.py, responses.py, tokenize.py) call `place`
for each image part: it keeps an `ImageSource` (a URL, or base64 data, and the part's
name for errors) in the request's `images` and returns the `IMAGE_MARKER` that stands for
it in the message text. Before any backend sees the request, `prepare` (awaited by the
routes) checks that the model takes images, then fetches and decodes them in a thread
(Pillow: JPEG, PNG, WebP, GIF's first frame) into the contract's `ImageInput`s.
Every failure is a `BadRequest` naming the part: the backend gets only decoded pixels.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import anyio

from llama_api.contract.records import IMAGE_MARKER, ImageInput, ModelSpec
from llama_api.errors import BadRequest, NotSupported

FORMATS = ("JPEG", "PNG", "WEBP", "GIF")


@dataclass(frozen=True)
class ImageSettings:
    """The bounds on images in one request (`serve --allow-image-urls` turns fetching on)."""

    allow_urls: bool = False
    max_images: int = 16
    max_bytes: int = 20 * 2**20  # one image, encoded (a fetch stops reading past it)
    # Width x height, read from the header before decoding: a small file that decodes to a
    # huge bitmap (a decompression bomb) is refused without allocating it.
    max_pixels: int = 50_000_000
    fetch_timeout: float = 10.0


class ImageSource:
    """An image part as sent: a URL (`data:` or http(s)) or base64 `data`, not yet read."""

    __slots__ = ("data", "media_type", "param", "url")

    def __init__(self, param: str, url: str | None = None, data: str | None = None,
                 media_type: str | None = None):
        self.param, self.url, self.data, self.media_type = param, url, data, media_type


def place(images: list, param: str, **source: Any) -> str:
    """Keep an image part (see ImageSource) in `images`; the marker for its place."""
    images.append(ImageSource(param, **source))
    return IMAGE_MARKER


def takes_images(spec: ModelSpec) -> bool:
    return "vision" in (spec.meta.get("capabilities") or ())


async def prepare(request, spec: ModelSpec, settings: ImageSettings) -> None:
    """Replace the request's ImageSources by decoded images (in a thread), or refuse."""
    sources = request.images
    if not sources or not isinstance(sources[0], ImageSource):
        return  # no images, or done already (the choices of one request share the list)
    first = sources[0].param
    if not takes_images(spec):
        raise NotSupported(f"`{first}` is an image, but model {spec.id} does not take images "
                           "(it has no vision projector); send text only, or use a vision "
                           "model", param=first)
    if len(sources) > settings.max_images:
        raise BadRequest(f"{len(sources)} images in one request; at most "
                         f"{settings.max_images} are allowed", param=sources[-1].param)
    texts = [m.get("content") or "" for m in request.messages or ()]
    if sum(text.count(IMAGE_MARKER) for text in texts) != len(sources):
        raise BadRequest(f"the text holds {IMAGE_MARKER!r}, which stands for an image here; "
                         "remove it from the text", param="messages")
    decoded = await anyio.to_thread.run_sync(
        lambda: [read(source, settings) for source in sources])
    sources[:] = decoded


def read(source: ImageSource, settings: ImageSettings) -> ImageInput:
    try:
        if source.data is not None:
            raw = from_base64(source.data, source.param, settings)
        else:
            raw = from_url(source.url or "", source.param, settings)
        return decode(raw, source.param, settings)
    except BadRequest as exc:  # named in the message too: Anthropic's errors have no param
        raise BadRequest(f"`{source.param}`: {exc.message}", param=source.param) from None


def from_base64(data: str, param: str, settings: ImageSettings) -> bytes:
    if len(data) > settings.max_bytes * 4 // 3 + 4:
        raise BadRequest(f"the image is larger than {settings.max_bytes} bytes", param=param)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("the image data is not valid base64", param=param) from None


def from_url(url: str, param: str, settings: ImageSettings) -> bytes:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        header, _, payload = url[5:].partition(",")
        if not header.endswith(";base64"):
            raise BadRequest("a data: URL image must be base64 "
                             "(data:image/png;base64,...)", param=param)
        return from_base64(payload, param, settings)
    if scheme not in ("http", "https"):
        raise BadRequest("an image URL must be a data: URL (or http(s), where the server "
                         "allows fetching)", param=param)
    if not settings.allow_urls:
        raise BadRequest("this server does not fetch image URLs (serve --allow-image-urls "
                         "turns it on); send the image as a data: URL", param=param)
    return fetch(url, param, settings)


class _SameSchemes(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib would follow one to ftp)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.URLError(f"redirect to {newurl.split(':', 1)[0]}: refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch(url: str, param: str, settings: ImageSettings) -> bytes:
    opener = urllib.request.build_opener(_SameSchemes)
    try:
        with opener.open(url, timeout=settings.fetch_timeout) as response:
            raw = response.read(settings.max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise BadRequest(f"could not fetch the image at {url}: {reason}", param=param) from None
    if len(raw) > settings.max_bytes:
        raise BadRequest(f"the image at {url} is larger than {settings.max_bytes} bytes",
                         param=param)
    return raw


def decode(raw: bytes, param: str, settings: ImageSettings) -> ImageInput:
    """RGB pixels of a JPEG, PNG, WebP or GIF (its first frame), transparency on white."""
    from PIL import Image, UnidentifiedImageError

    if len(raw) > settings.max_bytes:
        raise BadRequest(f"the image is larger than {settings.max_bytes} bytes", param=param)
    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.format not in FORMATS:
                raise BadRequest(f"unsupported image format {image.format}; send JPEG, PNG, "
                                 "WebP or GIF", param=param)
            width, height = image.size
            if width * height > settings.max_pixels:
                raise BadRequest(f"the image is {width}x{height} pixels; at most "
                                 f"{settings.max_pixels} pixels are allowed", param=param)
            image.seek(0)
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                picture = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                picture.alpha_composite(rgba)
                picture = picture.convert("RGB")
            else:
                picture = image.convert("RGB")
            pixels = picture.tobytes()
    except UnidentifiedImageError:
        raise BadRequest("the image is not a picture Pillow can read; send JPEG, PNG, WebP "
                         "or GIF", param=param) from None
    except Image.DecompressionBombError as exc:
        raise BadRequest(f"the image is too large: {exc}", param=param) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise BadRequest(f"the image is corrupt or truncated: {exc}", param=param) from None
    return ImageInput(width=width, height=height, rgb=pixels,
                      digest=hashlib.sha256(pixels).hexdigest())
