"""The web page's chat in a real browser (Debian's chromium through Playwright) against a
real server on echo models: what a person sees when an answer streams, stops, thinks,
branches, survives a reload, fails, or tries to run a script."""

from __future__ import annotations

import time

import pytest
from support import echo_server, read_events
from web_browser import Opened, axe_violations, browser, no_horizontal_scroll, shot  # noqa: F401

MODELS = {"fast": {}, "slow": {"delay": 0.05}, "broken": {"fail_load": "weights are corrupt"}}


@pytest.fixture(scope="module")
def web_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web-chat")
    with echo_server(folder / "models", models=MODELS, events=folder / "events.jsonl") as server:
        yield server


@pytest.fixture
def opened(browser, web_server):  # noqa: F811
    tab = Opened(browser, web_server.url)
    yield tab
    tab.close()


def send(page, text: str, model: str = "fast"):
    page.select_option("#chat-model", model)
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def last_answer(page):
    return page.locator(".message.assistant").last


def test_the_page_loads_with_no_console_error(opened):
    page = opened.go()
    assert page.title() == "llama-api"
    assert page.locator("#chat-model option").all_inner_texts() == ["broken", "fast", "slow"]
    send(page, "hello **bold** ONCE")
    answer = last_answer(page)
    answer.locator(".stats").wait_for()
    assert answer.locator(".content strong").inner_text() == "bold"  # Markdown
    assert "finish: stop" in answer.locator(".stats").inner_text()
    assert "tokens" in answer.locator(".stats").inner_text()
    shot(page, "chat-light")
    assert opened.errors == []


def test_an_answer_streams_in_and_stop_cancels_it_on_the_server(opened, web_server):
    page = opened.go()
    page.click("summary")  # settings
    page.fill("#set-max-tokens", "400")
    page.evaluate("""() => { window.paints = [];
      new MutationObserver(() => { const c = document.querySelector('.message.assistant .content');
        if (c) window.paints.push(c.textContent.length); })
        .observe(document.getElementById('messages'), {childList: true, subtree: true}); }""")
    send(page, "one two three", model="slow")
    answer = last_answer(page)
    page.wait_for_function("() => window.paints.filter(n => n > 0).length >= 3")
    assert page.is_enabled("#stop")
    page.keyboard.press("Escape")
    answer.locator(".stats").wait_for()
    assert "finish: stopped" in answer.locator(".stats").inner_text()
    lengths = sorted({n for n in page.evaluate("window.paints") if n > 0})
    assert len(lengths) >= 3  # painted piece by piece
    assert len(answer.locator(".content").inner_text().split()) < 400
    deadline = time.monotonic() + 10
    while not any(e["event"] == "cancelled" for e in read_events(web_server.events)):
        assert time.monotonic() < deadline, "the worker never saw the cancel"
        time.sleep(0.1)


def test_reasoning_is_folded_apart_from_the_answer(opened):
    page = opened.go()
    send(page, "<think> pondering deeply </think> the answer ONCE")
    answer = last_answer(page)
    answer.locator(".stats").wait_for()
    reasoning = answer.locator("details.reasoning")
    assert reasoning.get_attribute("open") is None  # folded
    assert "pondering" not in answer.locator(".content").inner_text()
    reasoning.locator("summary").click()
    assert "pondering deeply" in reasoning.inner_text()


def test_an_edited_message_starts_a_branch_and_the_old_one_stays(opened):
    page = opened.go()
    page.click("#new-chat")
    send(page, "apples ONCE")
    last_answer(page).locator(".stats").wait_for()
    page.locator(".message.user .edit-button").click()
    page.fill("textarea.edit", "pears ONCE")
    page.click("text=Save and send")
    page.wait_for_function("() => document.querySelector('.message.assistant .stats')"
                           " && document.querySelector('.message.assistant').innerText.includes('pears')")
    assert page.locator(".message.user .branch-count").inner_text() == "2/2"
    page.click("[aria-label='Previous branch']")
    assert page.locator(".message.user .branch-count").inner_text() == "1/2"
    assert "apples" in last_answer(page).inner_text()
    page.click("[aria-label='Next branch']")
    assert "pears" in last_answer(page).inner_text()


def test_a_conversation_survives_a_reload(opened):
    page = opened.go()
    page.click("#new-chat")
    send(page, "remember this ONCE")
    last_answer(page).locator(".stats").wait_for()
    page.reload()
    page.wait_for_selector("body[data-ready]")
    assert page.locator("#chat-list .open").first.inner_text() == "remember this ONCE"
    page.locator(".message.assistant .stats").wait_for()
    assert "remember this ONCE" in last_answer(page).inner_text()


def test_api_errors_are_shown_with_their_message(opened):
    page = opened.go()
    page.click("#new-chat")
    send(page, "hello", model="broken")
    error = last_answer(page).locator(".error")
    error.wait_for()
    assert "503" in error.inner_text() and "weights are corrupt" in error.inner_text()
    # A model that is gone (another tab's list, a rescan): the 404 lists what exists.
    page.evaluate("() => document.getElementById('chat-model').add(new Option('gone', 'gone'))")
    send(page, "hello", model="gone")
    error = last_answer(page).locator(".error")
    error.wait_for()
    assert "404" in error.inner_text() and "gone" in error.inner_text()


def test_an_answer_with_html_or_a_javascript_link_runs_nothing(opened):
    page = opened.go()
    page.click("#new-chat")
    send(page, '<img src=x onerror="window.pwned=1"> [click](javascript:window.pwned=2) '
               "<a href=\"javascript:window.pwned=3\">link</a> ONCE")
    answer = last_answer(page)
    answer.locator(".stats").wait_for()
    content = answer.locator(".content")
    assert "click" in content.inner_text()
    assert page.evaluate("() => window.pwned") is None
    assert content.locator("[onerror]").count() == 0
    for link in content.locator("a").all():
        assert not (link.get_attribute("href") or "").lower().startswith("javascript:")
        link.click()
    assert page.evaluate("() => window.pwned") is None


def test_the_keyboard_alone_reaches_every_control_and_axe_finds_no_serious_violation(
        browser, web_server):  # noqa: F811
    tab = Opened(browser, web_server.url, bypass_csp=True)  # axe goes in as an inline script
    try:
        page = tab.go()
        page.fill("#prompt", "first line")
        page.press("#prompt", "Shift+Enter")
        page.keyboard.type("second line")
        assert page.input_value("#prompt") == "first line\nsecond line"
        page.fill("#prompt", "")
        page.focus("body")
        reached = set()
        for _ in range(40):
            page.keyboard.press("Tab")
            reached.add(page.evaluate("() => document.activeElement.id"
                                      " || document.activeElement.textContent.trim()"))
        assert {"Chat", "Playgrounds", "Models", "Activity", "Metrics", "new-chat",
                "import-chats", "chat-model", "prompt", "send"} <= reached  # attach: disabled here
        page.select_option("#chat-model", "fast")
        page.focus("#prompt")
        page.keyboard.type("typed ONCE")
        page.keyboard.press("Enter")
        last_answer(page).locator(".stats").wait_for()
        assert "typed ONCE" in last_answer(page).inner_text()
        for view in ("chat", "playgrounds"):
            page.goto(f"{web_server.url}/#{view}")
            page.wait_for_selector("body[data-ready]")
            assert axe_violations(page) == [], view
    finally:
        tab.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_phone_wide_page_has_no_horizontal_scroll(browser, web_server, scheme):  # noqa: F811
    tab = Opened(browser, web_server.url, viewport={"width": 375, "height": 740},
                 color_scheme=scheme)
    try:
        page = tab.go()
        send(page, "a long answer with a ```code block``` that wraps on a phone " * 3 + "ONCE")
        last_answer(page).locator(".stats").wait_for()
        for view in ("chat", "playgrounds", "models", "activity", "metrics"):
            page.goto(f"{web_server.url}/#{view}")
            page.wait_for_timeout(100)
            assert no_horizontal_scroll(page), view
        if scheme == "dark":
            page.goto(f"{web_server.url}/#chat")
            shot(page, "chat-phone-dark")
    finally:
        tab.close()
