"""The README's Quickstart examples work as written against any served model, not only the demo's name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from tests.support.server import RunningServer

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_the_curl_chat_example_answers_whatever_model_is_served(tiny_fixture):
    body = re.search(r"curl http://127\.0\.0\.1:8080/v1/chat/completions .*?-d '(\{.*?\})'", README, re.S)
    assert body, "the README's curl example of the chat port"
    srv = RunningServer("torch-cpu", tiny_fixture, max_tokens=8)  # served as its path, not "neuroscope-demo"
    try:
        r = httpx.post(f"{srv.chat}/v1/chat/completions", json=json.loads(body.group(1)), timeout=60)
    finally:
        srv.stop()
    assert r.status_code == 200, r.text
    assert r.json()["model"] == srv.model_id != "neuroscope-demo"


def test_the_openai_snippet_says_what_to_install():
    snippet = README.index("from openai import OpenAI")
    assert "pip install openai" in README[snippet - 400:snippet]


def test_pull_is_offered_only_with_what_works_today():
    """Nothing is published in the default data repo yet: the README offers `pull` with a repo, and says why."""
    for line in README.splitlines():
        if line.strip().startswith("neuroscope pull"):
            assert "--repo" in line, line
    assert "nothing\nis in the default data repo yet" in README or "nothing is in the default data repo yet" in README
