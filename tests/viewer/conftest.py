"""A real headless Chromium (Debian's ``chromium`` package) driven by Playwright, and a server for it to view.

Without Playwright or the browser these tests are skipped with the reason, except under ``CI=true``, where a
missing browser is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.server import RunningServer
from tests.viewer.pages import Page

CHROMIUM = os.environ.get("NEUROSCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu"]


def _missing(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed: pip install -e '.[dev]'")
    if not Path(CHROMIUM).exists():
        _missing(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set NEUROSCOPE_CHROMIUM)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def viewer_server(tiny_fixture):
    srv = RunningServer("torch-cpu", tiny_fixture, max_tokens=24)
    yield srv
    srv.stop()


@pytest.fixture
def open_page(browser):
    pages: list[Page] = []

    def open_(url: str) -> Page:
        pages.append(Page(browser, url))
        return pages[-1]

    yield open_
    for p in pages:
        p.close()
