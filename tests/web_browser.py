"""What the browser tests of the web page share: Debian's chromium driven by Playwright (one
browser per test module), pages that collect console errors, screenshots, axe-core.

Missing chromium or Playwright skips the tests, naming what is missing; under `make test`
(LLAMA_API_STRICT_SKIPS), whose set-up installs both, it fails instead."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
AXE = REPO / "core" / "web" / "node_modules" / "axe-core" / "axe.min.js"
# LLAMA_API_SCREENSHOTS=docs/screenshots: the tests save what they show there.
SCREENSHOTS = os.environ.get("LLAMA_API_SCREENSHOTS")


def missing(what: str) -> None:
    message = f"{what} is missing: the web page's browser tests need it (`make setup-test`)"
    if os.environ.get("LLAMA_API_STRICT_SKIPS"):
        pytest.fail(f"{message}; LLAMA_API_STRICT_SKIPS is set (`make test` installs it)",
                    pytrace=False)
    pytest.skip(message)


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    missing("chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package (pip install playwright)")
    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable,
                                              args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            launched.close()


class Opened:
    """A page on `url` with its console errors and uncaught exceptions kept in `errors`."""

    def __init__(self, browser, url: str, **context):
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.url = url

    def go(self, view: str = "chat"):
        self.page.goto(f"{self.url}/#{view}")
        self.page.wait_for_selector("body[data-ready]", timeout=15_000)
        return self.page

    def close(self) -> None:
        self.context.close()


def shot(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"))


def axe_violations(page, impacts=("serious", "critical")) -> list[dict]:
    """axe-core's violations of `impacts` on the page (the context must bypass the CSP, as
    the page forbids the inline script axe is injected with)."""
    if not AXE.exists():
        missing(f"axe-core ({AXE.relative_to(REPO)}: npm ci in core/web)")
    page.add_script_tag(content=AXE.read_text())
    result = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']}))"
                           ".violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
                           " nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))")
    return [v for v in result if v["impact"] in impacts]


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
