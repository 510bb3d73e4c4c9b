"""The web page's operator views in a real browser against a real server with an admin key:
models going unloaded → loading → loaded after a chat and unloaded again (refused without
the admin key), the activity of that chat, and the metrics charts."""

from __future__ import annotations

import threading

import pytest
from support import chat, echo_server
from web_browser import Opened, axe_violations, browser, shot  # noqa: F401

ADMIN = "admin-secret"
MODELS = {"fast": {}, "loady": {"load_delay": 1.5, "delay": 0.02}}


@pytest.fixture(scope="module")
def web_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web-operator")
    with echo_server(folder / "models", "--admin-key", ADMIN, models=MODELS) as server:
        yield server


@pytest.fixture(scope="module")
def operator(browser, web_server):  # noqa: F811
    """One tab for the module, holding the admin key once given; the metrics view starts
    first, so that it has samples by the time its test looks."""
    tab = Opened(browser, web_server.url)
    page = tab.go("metrics")
    yield tab, page
    tab.close()


def key_button(page, view):
    return page.locator(f"#view-{view} button", has_text="Enter the admin key")


def enter_admin_key(page, key):
    page.fill("#key-input", key)
    page.click("#key-form button[type=submit]")


def test_models_are_refused_without_the_admin_key_and_shown_with_it(operator):
    tab, page = operator
    page.goto(f"{tab.url}/#models")
    refused = page.locator("#models-refused-text")
    refused.wait_for()
    assert "401" in refused.inner_text() and "admin key" in refused.inner_text()
    key_button(page, "models").click()
    enter_admin_key(page, "wrong")
    page.wait_for_function("() => document.getElementById('key-dialog').open")  # asked again
    page.click("#key-cancel")
    page.wait_for_function("() => document.getElementById('models-refused-text').innerText"
                           ".includes('wrong admin key')")
    key_button(page, "models").click()
    enter_admin_key(page, ADMIN)
    page.locator("tr[data-model=loady]").wait_for()
    assert page.locator("tr[data-model=loady] .state").inner_text() == "unloaded"
    assert page.is_visible("#forget-keys")


def test_a_chat_takes_a_model_from_unloaded_through_loading_to_loaded(operator, web_server):
    _tab, page = operator
    state = page.locator("tr[data-model=loady] .state")
    assert state.inner_text() == "unloaded"
    answered = []
    sender = threading.Thread(target=lambda: answered.append(
        chat(web_server, "loady", content="hello there", max_tokens=5)))
    sender.start()
    try:
        page.wait_for_function(  # through /admin/events, not a poll: the load takes 1.5 s
            "() => document.querySelector('tr[data-model=loady] .state').innerText"
            ".startsWith('loading')", timeout=5000)
        page.wait_for_function(
            "() => document.querySelector('tr[data-model=loady] .state').innerText == 'loaded'",
            timeout=10_000)
    finally:
        sender.join()
    assert answered[0].status_code == 200
    shot(page, "models-light")


def test_unload_works_with_the_admin_key(operator):
    _tab, page = operator
    page.click("[aria-label='Unload loady']")
    page.wait_for_function(
        "() => document.querySelector('tr[data-model=loady] .state').innerText == 'unloaded'",
        timeout=10_000)
    page.click("[aria-label='Pin fast']")
    page.wait_for_function(
        "() => document.querySelector('tr[data-model=fast]').innerText.includes('Unpin')")


def test_unload_is_refused_once_the_key_is_forgotten(operator):
    _tab, page = operator
    page.click("[aria-label='Load fast']")
    page.locator("tr[data-model=fast] [aria-label='Unload fast']").wait_for()
    page.click("#forget-keys")
    page.click("[aria-label='Unload fast']")
    page.wait_for_function("() => document.getElementById('key-dialog').open")
    page.click("#key-cancel")
    notice = page.locator("#notice-text")
    notice.wait_for()
    assert "unload fast: 401" in notice.inner_text()


def test_activity_lists_the_chat_with_its_model_and_status(operator):
    tab, page = operator
    page.goto(f"{tab.url}/#activity")
    key_button(page, "activity").click()
    enter_admin_key(page, ADMIN)
    row = page.locator("table.activity tbody tr", has_text="loady").first
    row.wait_for()
    assert "POST /v1/chat/completions" in row.inner_text() and "200" in row.inner_text()


def test_metrics_draw_tokens_per_second_ttft_and_queue_depth(operator, web_server):
    tab, page = operator
    page.click("nav >> text=Metrics")  # in the page: a reload would lose its samples
    page.wait_for_function("() => document.querySelectorAll('.chart canvas').length == 3")
    for _ in range(3):
        chat(web_server, "fast", content="count these words", max_tokens=20)
    page.wait_for_function("() => document.getElementById('latest-rate').innerText.includes('fast')",
                           timeout=15_000)  # a sample after the chats
    assert "tokens/s" in page.inner_text("#latest-rate")
    assert page.locator(".u-legend").first.inner_text().count("fast") == 1
    if page.is_visible("#notice"):  # the refused unload of the test before
        page.click("#notice-close")
    shot(page, "metrics-light")
    assert tab.errors == [] or all("401" in e for e in tab.errors)  # the refused calls


@pytest.mark.parametrize("view", ["models", "metrics"])
def test_dark_operator_views_pass_axe(browser, web_server, view):  # noqa: F811
    tab = Opened(browser, web_server.url, color_scheme="dark", bypass_csp=True)
    try:
        page = tab.go(view)
        key_button(page, view).click()
        enter_admin_key(page, ADMIN)
        page.wait_for_selector("#models-refused, #metrics-refused", state="hidden")
        page.wait_for_timeout(300)
        shot(page, f"{view}-dark")
        assert axe_violations(page) == [], view
    finally:
        tab.close()
