"""Takes docs/viewer.png: `neuroscope serve --demo`, two turns of chat in the viewer (the second steered: feature
193 added by 8), a token's features pinned.

    python docs/screenshot.py          (needs playwright and Debian's chromium, as the viewer tests do)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

OUT = Path(__file__).with_name("viewer.png")
CHROMIUM = os.environ.get("NEUROSCOPE_CHROMIUM", "/usr/bin/chromium")


def main() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuroscope", "serve", "--demo", "--backend", "torch-cpu", "--port", "0",
         "--features-port", "0", "--top-k", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    try:
        for line in proc.stdout:
            m = re.search(r"viewer: (http://\S+)", line)
            if m:
                break
        else:
            raise SystemExit("the server did not start")
        with sync_playwright() as pw:
            args = ["--headless=new", "--no-sandbox", "--disable-gpu"]
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(m.group(1))
            expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
            page.fill("#max-tokens", "72")
            page.fill("#temperature", "0")
            for i, text in enumerate(["Write a haiku about autumn leaves.", "Now one about the sea, please."]):
                if i == 1:
                    page.fill("#steer-index", "193")
                    page.fill("#steer-value", "8")
                    page.click("#steer-add")
                page.fill("#chat-input", text)
                page.press("#chat-input", "Enter")
                expect(page.locator(".turn-status").nth(i)).to_have_text(re.compile(r"\d+ tokens · "), timeout=60_000)
            page.locator('.turn >> nth=1 >> .reply .tok[data-token-index="6"]').click()
            page.mouse.move(0, 0)
            page.screenshot(path=str(OUT))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
