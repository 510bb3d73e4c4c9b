"""Reading images in requests (api/images.py): formats, bounds, URLs, and the 400s."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest

from llama_api.api import images
from llama_api.api.images import ImageSettings, ImageSource, decode, from_url, prepare
from llama_api.contract.records import IMAGE_MARKER, GenerateRequest, ModelSpec
from llama_api.errors import BadRequest, NotSupported

Image = pytest.importorskip("PIL.Image")

SETTINGS = ImageSettings()


def encoded(image, fmt: str, **save) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_each_supported_format_decodes_to_rgb(fmt):
    picture = decode(encoded(Image.new("RGB", (8, 6), (200, 30, 30)), fmt), "p", SETTINGS)
    assert (picture.width, picture.height) == (8, 6)
    assert len(picture.rgb) == 8 * 6 * 3 and len(picture.digest) == 64


def test_a_gif_is_read_at_its_first_frame():
    frames = [Image.new("RGB", (4, 4), color) for color in ((255, 0, 0), (0, 0, 255))]
    raw = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode(raw, "p", SETTINGS).rgb[:3] == bytes([255, 0, 0])


def test_transparency_lies_on_white():
    raw = encoded(Image.new("RGBA", (2, 2), (0, 0, 0, 0)), "PNG")
    assert decode(raw, "p", SETTINGS).rgb[:3] == bytes([255, 255, 255])


def test_same_pixels_same_digest_other_pixels_other_digest():
    red = encoded(Image.new("RGB", (4, 4), (255, 0, 0)), "PNG")
    assert decode(red, "p", SETTINGS).digest == decode(red, "p", SETTINGS).digest
    blue = encoded(Image.new("RGB", (4, 4), (0, 0, 255)), "PNG")
    assert decode(red, "p", SETTINGS).digest != decode(blue, "p", SETTINGS).digest


@pytest.mark.parametrize("raw, reason", [
    (b"not an image at all", "not a picture"),
    (encoded(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:60], "corrupt or truncated"),
    (encoded(Image.new("RGB", (4, 4)), "BMP"), "unsupported image format BMP"),
])
def test_bad_images_are_400s_naming_the_part(raw, reason):
    with pytest.raises(BadRequest, match=reason) as caught:
        decode(raw, "messages[0].content[1]", SETTINGS)
    assert caught.value.param == "messages[0].content[1]"


def test_a_decompression_bomb_is_refused_before_it_is_decoded():
    bomb = encoded(Image.new("1", (12000, 5000)), "PNG")  # ~60 M pixels in a few KB
    assert len(bomb) < 100_000
    with pytest.raises(BadRequest, match="at most 50000000 pixels"):
        decode(bomb, "p", SETTINGS)


def test_a_data_url_must_be_base64_and_other_urls_need_fetching_on():
    png = encoded(Image.new("RGB", (2, 2)), "PNG")
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    assert from_url(url, "p", SETTINGS) == png
    with pytest.raises(BadRequest, match="base64"):
        from_url("data:image/png,%89PNG", "p", SETTINGS)
    with pytest.raises(BadRequest, match="allow-image-urls"):
        from_url("https://example.com/cat.png", "p", SETTINGS)
    with pytest.raises(BadRequest, match="data: URL"):
        from_url("file:///etc/passwd", "p", ImageSettings(allow_urls=True))


def request_with(n: int, text: str = "") -> GenerateRequest:
    png = base64.b64encode(encoded(Image.new("RGB", (2, 2)), "PNG")).decode()
    sources = [ImageSource(f"messages[0].content[{i}]", data=png) for i in range(n)]
    return GenerateRequest(messages=[{"role": "user", "content": text + IMAGE_MARKER * n}],
                           images=sources)


VISION = ModelSpec(id="seer", backend="x", meta={"capabilities": ["vision"]})


def test_prepare_decodes_the_sources_in_place():
    request = request_with(2)
    asyncio.run(prepare(request, VISION, SETTINGS))
    assert [image.width for image in request.images] == [2, 2]


def test_a_model_without_vision_is_named_in_the_refusal():
    with pytest.raises(NotSupported, match="model blind does not take images"):
        asyncio.run(prepare(request_with(1), ModelSpec(id="blind", backend="x"), SETTINGS))


def test_more_images_than_the_limit_and_a_marker_in_the_text_are_400s():
    with pytest.raises(BadRequest, match="at most 2"):
        asyncio.run(prepare(request_with(3), VISION, ImageSettings(max_images=2)))
    with pytest.raises(BadRequest, match="stands for an image"):
        asyncio.run(prepare(request_with(1, text=IMAGE_MARKER), VISION, SETTINGS))


def test_a_fetch_reads_at_most_the_byte_limit(monkeypatch):
    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class Opener:
        def open(self, url, timeout):
            return Response(b"x" * 100)

    monkeypatch.setattr(images.urllib.request, "build_opener", lambda *handlers: Opener())
    with pytest.raises(BadRequest, match="larger than 10 bytes"):
        from_url("http://localhost/big.png", "p", ImageSettings(allow_urls=True, max_bytes=10))


def test_models_toml_mmproj_makes_a_vision_model(tmp_path):
    from llama_api.scheduling.registry import read_config

    (tmp_path / "mmproj-seer.gguf").write_bytes(b"GGUF")
    config = tmp_path / "models.toml"
    config.write_text('[models.seer]\nbackend = "llamacpp"\npath = "seer.gguf"\n'
                      'mmproj = "mmproj-seer.gguf"\n[models.plain]\nbackend = "llamacpp"\n')
    seer, plain = read_config(config, {"llamacpp": "llamacpp"})
    assert images.takes_images(seer) and not images.takes_images(plain)
    assert seer.options["mmproj"] == str(tmp_path / "mmproj-seer.gguf")


def test_an_allowed_fetch_reads_http_and_never_follows_a_redirect_to_another_scheme():
    import http.server
    import threading

    png = encoded(Image.new("RGB", (3, 3)), "PNG")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/cat.png":
                self.send_response(200)
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)
            else:
                self.send_response(302)
                self.send_header("Location", "ftp://127.0.0.1/cat.png")  # urllib follows ftp
                self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    allowed = ImageSettings(allow_urls=True, fetch_timeout=5)
    try:
        assert from_url(base + "/cat.png", "p", allowed) == png
        with pytest.raises(BadRequest, match="redirect to ftp: refused"):
            from_url(base + "/elsewhere", "p", allowed)
    finally:
        server.shutdown()
        server.server_close()
