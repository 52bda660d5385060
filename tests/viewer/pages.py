"""The viewer as a test drives it: a page that records errors, sending a chat, reading tokens and panels."""

from __future__ import annotations

import re
import time

from tests.support.server import SSEReader


class Page:
    """A browser page that records what a user would see go wrong: console errors, page errors, failed loads."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(viewport={"width": 1280, "height": 860})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", lambda r: r.status >= 400 and self.errors.append(f"HTTP {r.status}: {r.url}"))
        self.page.goto(url)

    def _failed(self, request) -> None:
        if request.resource_type == "eventsource" and request.failure == "net::ERR_ABORTED":
            return  # the page closed a feature stream it had read to the end
        self.errors.append(f"failed: {request.url} {request.failure}")

    def close(self) -> None:
        self.context.close()


DONE = re.compile(r"\d+ tokens · (length|stop)")


def chat(page, text: str, *, max_tokens: int = 24, prompt: bool = False, timeout: float = 60_000) -> str:
    """Send ``text`` from the page; wait until its reply's features are all in; return its request id."""
    from playwright.sync_api import expect

    turns = page.locator(".turn")
    n = turns.count()
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#temperature", "0")
    page.set_checked("#include-prompt", prompt)
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")
    turn = turns.nth(n)
    expect(turn.locator(".turn-status")).to_have_text(DONE, timeout=timeout)
    return turn.get_attribute("data-request-id")


def sse_events(reader: SSEReader, rid: str, *, prompt: bool = False) -> list[dict]:
    deadline = time.monotonic() + 30
    while not reader.of(rid, "generation_complete"):
        assert time.monotonic() < deadline, "the independent SSE reader never saw the request complete"
        time.sleep(0.02)
    return [e for e in reader.of(rid) if e["prompt"] == prompt]


def drawn(text: str) -> str:
    """A token's text as the page draws it: C0 controls (but tab and newline) as Control Pictures, DEL as ␡,
    C1 controls as \\xNN."""
    def one(c: str) -> str:
        code = ord(c)
        if c in "\t\n" or not (code < 0x20 or 0x7F <= code <= 0x9F):
            return c
        return chr(0x2400 + code) if code < 0x20 else "\u2421" if code == 0x7F else f"\\x{code:x}"

    return "".join(one(c) for c in text)


def rendered(page, rid: str, *, prompt: bool = False) -> list[tuple[int, str]]:
    sel = f'.tok[data-request-id="{rid}"]' + ('[data-prompt="true"]' if prompt else ":not([data-prompt])")
    pairs = page.locator(sel).evaluate_all("els => els.map(e => [Number(e.dataset.tokenIndex), e.textContent])")
    return [tuple(p) for p in pairs]


def token(page, rid: str, index: int, *, prompt: bool = False):
    sel = f'.tok[data-request-id="{rid}"][data-token-index="{index}"]'
    return page.locator(sel + ('[data-prompt="true"]' if prompt else ":not([data-prompt])"))


def panel_features(page) -> list[tuple[int, str, float]]:
    rows = page.locator("#feature-panel .feat").evaluate_all(
        "els => els.map(e => [Number(e.dataset.featureIndex), e.querySelector('.flabel').textContent, "
        "Number(e.querySelector('.fval').textContent)])")
    return [tuple(r) for r in rows]


def alpha(page, locator) -> float:
    colour = locator.evaluate("el => getComputedStyle(el).backgroundColor")
    m = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, ([\d.]+))?\)", colour)
    assert m, colour
    return float(m.group(4) or 1)
