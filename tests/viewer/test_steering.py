"""The viewer's steering control in a real browser: the request it sends, the steered reply it shows, and the
server's refusal of a bad entry."""

from __future__ import annotations

import re

import pytest

from tests.viewer.pages import DONE, chat, rendered

pytestmark = pytest.mark.usefixtures("browser")
PROMPT = "What is the capital of France?"


def chat_bodies(page) -> list[dict]:
    """The bodies of the chat requests the page sends from now on, as it sent them."""
    bodies: list[dict] = []
    page.on("request", lambda r: r.method == "POST" and r.url.endswith("/v1/chat/completions")
            and bodies.append(r.post_data_json))
    return bodies


def steer(page, index: int, mode: str, value: float | None = None) -> None:
    page.fill("#steer-index", str(index))
    page.select_option("#steer-mode", mode)
    if value is not None:
        page.fill("#steer-value", str(value))
    page.click("#steer-add")


def resend(page, *, timeout: float = 60_000) -> str:
    from playwright.sync_api import expect

    turns = page.locator(".turn")
    n = turns.count()
    page.click("#resend-button")
    turn = turns.nth(n)
    expect(turn.locator(".turn-status")).to_have_text(DONE, timeout=timeout)
    return turn.get_attribute("data-request-id")


def text_of(page, rid: str) -> str:
    return "".join(t for _, t in rendered(page, rid))


def test_steer_resend_and_unsteer(viewer_server, open_page):
    from playwright.sync_api import expect

    p = open_page(f"{viewer_server.features}/")
    page = p.page
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    bodies = chat_bodies(page)
    expect(page.locator("#resend-button")).to_be_disabled()  # nothing sent yet
    plain = chat(page, PROMPT, max_tokens=12)
    assert "steering" not in bodies[-1]
    expect(page.locator(".turn").nth(0).locator(".steer-badge")).to_be_hidden()
    assert page.locator(f'.tok.steered[data-request-id="{plain}"]').count() == 0

    # one entry, typed in; ablate hides the value field, add shows it again
    page.select_option("#steer-mode", "ablate")
    expect(page.locator("#steer-value")).to_be_hidden()
    steer(page, 193, "add", 8)
    expect(page.locator("#steer-value")).to_be_visible()
    expect(page.locator("#steer-list .steer-entry")).to_have_text(["#193 add 8×"])
    expect(page.locator("#steer-none")).to_be_hidden()

    steered = resend(page)
    assert bodies[-1]["steering"] == {"features": [{"index": 193, "mode": "add", "value": 8}], "positions": "all"}
    # the same message after the same (empty) history: a resend does not append the first reply
    assert bodies[-1]["messages"] == [{"role": "user", "content": PROMPT}]
    turn = page.locator(".turn").nth(1)
    expect(turn.locator(".msg.user .role")).to_have_text("you · resent")
    expect(turn.locator(".steer-badge")).to_have_text("steered: #193 add 8")
    tokens = rendered(page, steered)
    assert len(tokens) == 12
    assert page.locator(f'.tok.steered[data-request-id="{steered}"]').count() == 12  # positions "all": every one
    assert text_of(page, steered) != text_of(page, plain)

    # the hover panel says so too
    page.locator(f'.tok[data-request-id="{steered}"]').first.hover()
    expect(page.locator("#token-detail")).to_contain_text("steered")

    # removing the entry sends unsteered again: the first reply, token for token
    page.click('#steer-list [data-steer-remove="193"]')
    expect(page.locator("#steer-list .steer-entry")).to_have_count(0)
    expect(page.locator("#steer-none")).to_be_visible()
    again = resend(page)
    assert "steering" not in bodies[-1]
    expect(page.locator(".turn").nth(2).locator(".steer-badge")).to_be_hidden()
    assert page.locator(f'.tok.steered[data-request-id="{again}"]').count() == 0
    assert rendered(page, again) == rendered(page, plain)
    assert p.errors == []


def test_several_features_from_the_panel_and_generated_positions(viewer_server, open_page):
    from playwright.sync_api import expect

    p = open_page(f"{viewer_server.features}/")
    page = p.page
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    bodies = chat_bodies(page)
    first = chat(page, "Hello there.", max_tokens=6)
    # pick a feature from the panel: select it, then "steer" adds it to the list at once (add 8, as shown)
    page.locator(f'.tok[data-request-id="{first}"]').first.click()
    feature = int(page.locator("#feature-panel .feat").first.get_attribute("data-feature-index"))
    page.locator("#feature-panel .feat").first.click()
    page.click("#feature-steer")
    expect(page.locator("#steer-list .steer-entry")).to_have_text([f"#{feature} add 8×"])
    steer(page, feature, "ablate")  # typed again: its entry is replaced
    other = 193 if feature != 193 else 2
    steer(page, other, "clamp", 3.5)
    steer(page, other, "add", -4)  # the same feature again replaces its entry
    page.select_option("#steer-positions", "generated")
    rid = chat(page, "And a second turn.", max_tokens=6)  # a plain send carries the steering too
    assert bodies[-1]["steering"] == {
        "features": [{"index": feature, "mode": "ablate"}, {"index": other, "mode": "add", "value": -4}],
        "positions": "generated",
    }
    assert [m["role"] for m in bodies[-1]["messages"]] == ["user", "assistant", "user"]
    badge = f"steered: #{feature} ablate, #{other} add -4 · generated only"
    expect(page.locator(".turn").nth(1).locator(".steer-badge")).to_have_text(badge)
    # "generated": the first token comes from the unsteered prefill, every later one is steered
    marks = page.locator(f'.tok[data-request-id="{rid}"]').evaluate_all(
        "els => els.map(e => e.classList.contains('steered'))")
    assert marks == [False] + [True] * 5
    assert p.errors == []


def test_a_bad_value_shows_the_server_error(viewer_server, open_page):
    from playwright.sync_api import expect

    p = open_page(f"{viewer_server.features}/")
    page = p.page
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    bodies = chat_bodies(page)
    steer(page, 12, "add", 5000)
    page.fill("#max-tokens", "4")
    page.fill("#chat-input", "hello")
    page.press("#chat-input", "Enter")
    message = "'steering.features[0].value' must be between -1000 and 1000, got 5000"
    expect(page.locator("#error-text")).to_have_text(message)
    expect(page.locator("#error-bar")).to_be_visible()
    turn = page.locator(".turn").nth(0)
    expect(turn.locator(".turn-error")).to_have_text(message)
    expect(turn.locator(".turn-status")).to_have_text("failed")
    assert bodies[-1]["steering"]["features"] == [{"index": 12, "mode": "add", "value": 5000}]
    # fixed in place, the failed message can be resent; the old error goes away
    steer(page, 12, "add", 50)
    rid = resend(page)
    assert bodies[-1]["steering"]["features"] == [{"index": 12, "mode": "add", "value": 50}]
    assert len(rendered(page, rid)) == 4
    expect(page.locator("#error-bar")).to_be_hidden()
    # the 400 itself (and the browser's note of it) are the only things that went wrong
    assert p.errors and all(re.search(r"\b400\b", e) for e in p.errors), p.errors
    assert not [e for e in p.errors if e.startswith("page error")]


def test_the_panels_steer_is_in_the_next_resend(viewer_server, open_page):
    """"steer" in the feature panel is enough: a Resend right after it goes out steered by that feature."""
    from playwright.sync_api import expect

    p = open_page(f"{viewer_server.features}/")
    page = p.page
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    bodies = chat_bodies(page)
    first = chat(page, PROMPT, max_tokens=4)
    page.locator(f'.tok[data-request-id="{first}"]').first.click()
    feature = int(page.locator("#feature-panel .feat").first.get_attribute("data-feature-index"))
    page.locator("#feature-panel .feat").first.click()
    page.fill("#steer-value", "-6")
    page.click("#feature-steer")
    resend(page)
    assert bodies[-1]["steering"] == {"features": [{"index": feature, "mode": "add", "value": -6}], "positions": "all"}
    assert p.errors == []


def test_the_index_box_refuses_features_the_sae_does_not_have_as_they_are_typed(viewer_server, open_page):
    from playwright.sync_api import expect

    p = open_page(f"{viewer_server.features}/")
    page = p.page
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    box, note = page.locator("#steer-index"), page.locator("#steer-index-note")
    box.press_sequentially("25")
    expect(box).to_have_value("25")
    expect(note).to_be_hidden()
    box.press_sequentially("6")  # 256: the tiny SAE has features 0-255
    expect(box).to_have_value("25")
    expect(note).to_have_text("features are 0–255")
    box.press_sequentially("5")
    expect(box).to_have_value("255")
    expect(note).to_be_hidden()
    box.fill("")
    box.press_sequentially("-")  # no negative indices either
    expect(box).to_have_value("")
    box.fill("99999")  # pasted
    expect(box).to_have_value("")
    box.press("Enter")  # nothing to add
    expect(page.locator("#steer-list .steer-entry")).to_have_count(0)
    box.press_sequentially("7")
    box.press("Enter")
    expect(page.locator("#steer-list .steer-entry")).to_have_text(["#7 add 8×"])
    assert p.errors == []
