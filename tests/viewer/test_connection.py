"""The viewer's connection in a real browser: it asks for the API key, and it reconnects when the server
comes back."""

from __future__ import annotations

import re
import socket

import pytest

from neuroscope.server.access import Access
from tests.support.server import RunningServer
from tests.viewer.pages import chat, rendered

pytestmark = pytest.mark.usefixtures("browser")
KEY = "viewer-test-key"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_the_page_asks_for_the_api_key_and_keeps_it_for_the_tab(tiny_fixture, open_page):
    from playwright.sync_api import expect

    srv = RunningServer("torch-cpu", tiny_fixture, access=Access(api_key=KEY))
    try:
        p = open_page(f"{srv.features}/")  # the page itself loads without a key
        dialog, state = p.page.locator("#key-dialog"), p.page.locator("#connection")
        expect(dialog).to_be_visible()
        expect(state).to_have_attribute("data-state", "key")
        p.page.fill("#key-input", "not-the-key")
        p.page.click("#key-submit")
        expect(p.page.locator("#key-error")).to_have_text("That key was not accepted.")
        expect(dialog).to_be_visible()
        p.page.fill("#key-input", KEY)
        p.page.click("#key-submit")
        expect(dialog).to_be_hidden()
        expect(state).to_have_attribute("data-state", "connected")
        rid = chat(p.page, "hi", max_tokens=5)  # the chat API with the header, the stream with ?api_key=
        assert len(rendered(p.page, rid)) == 5
        assert p.page.evaluate("() => sessionStorage.getItem('neuroscope-api-key')") == KEY
        p.page.reload()
        expect(state).to_have_attribute("data-state", "connected")
        expect(dialog).to_be_hidden()
    finally:
        srv.stop()


def test_the_page_reconnects_when_the_server_comes_back(tiny_fixture, open_page):
    from playwright.sync_api import expect

    chat_port, features_port = free_ports(2)
    srv = RunningServer("torch-cpu", tiny_fixture, port=chat_port, features_port=features_port)
    try:
        p = open_page(f"{srv.features}/")
        state = p.page.locator("#connection")
        expect(state).to_have_attribute("data-state", "connected")
        srv.stop()
        srv = None
        expect(state).to_have_attribute("data-state", re.compile("reconnecting|offline"), timeout=15_000)
        srv = RunningServer("torch-cpu", tiny_fixture, port=chat_port, features_port=features_port)
        expect(state).to_have_attribute("data-state", "connected", timeout=30_000)
        rid = chat(p.page, "hello again", max_tokens=4)
        assert len(rendered(p.page, rid)) == 4
    finally:
        if srv is not None:
            srv.stop()
