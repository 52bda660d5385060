"""The feature explorer in a real browser: search → page → "Steer with this" → a reply marked steered; a
token's feature opens its page; a neighbour opens another; Inspect shows a text's tokens with the same hover
as replies, equal to the API's answer."""

from __future__ import annotations

import json

import httpx
import pytest

from neuroscope.core.sae import load_npz
from neuroscope.labels.chain import Layer, LabelChain
from tests.support.server import RunningServer
from tests.viewer.pages import chat, panel_features

pytestmark = pytest.mark.usefixtures("browser")


@pytest.fixture(scope="module")
def server(tiny_fixture):
    d_sae = load_npz(tiny_fixture.sae_path).d_sae
    chain = LabelChain(d_sae, [Layer("labels-path", "planted.json", {7: ("Golden Gate Bridge", 0.9),
                                                                        12: ("golden retrievers", None)})])
    srv = RunningServer("torch-cpu", tiny_fixture, max_tokens=24, labels=chain)
    yield srv
    srv.stop()


def test_search_page_steer_reply(server, open_page):
    from playwright.sync_api import expect

    p = open_page(f"{server.features}/")
    page = p.page
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    page.fill("#feature-search", "golden ga")
    hits = page.locator("#search-results [data-open-feature]")
    expect(hits.first).to_have_attribute("data-open-feature", "7")
    expect(hits.first).to_contain_text("Golden Gate Bridge")
    expect(hits.first).to_contain_text("labels-path 0.90")
    hits.first.click()
    panel = page.locator("#feature-page")
    expect(panel).to_be_visible()
    expect(panel.locator(".flabel-big")).to_have_text("Golden Gate Bridge")
    api = httpx.get(f"{server.features}/v1/features/7").json()
    shown = panel.locator(".neighbours [data-open-feature]").evaluate_all("els => els.map(e => Number(e.dataset.openFeature))")
    assert shown == [n["index"] for n in api["neighbours"]]
    logit_tokens = panel.locator(".logit-col.positive .logit-tok").all_text_contents()
    assert logit_tokens == [json.dumps(t["token"], ensure_ascii=False) for t in api["logits"]["positive"]]
    # Steer with this: the steering row lists it, and the next reply is steered by it
    page.click("#page-steer")
    expect(page.locator("#steer-list")).to_contain_text("#7 add 8")
    bodies = []
    page.on("request", lambda r: r.method == "POST" and r.url.endswith("/v1/chat/completions")
            and bodies.append(r.post_data_json))
    rid = chat(page, "Where is the bridge?", max_tokens=6)
    assert bodies[-1]["steering"]["features"] == [{"index": 7, "mode": "add", "value": 8}]
    turn = page.locator(f'.turn[data-request-id="{rid}"]')
    expect(turn.locator(".steer-badge")).to_have_text("steered: #7 add 8")
    # a neighbour opens its own page
    first = shown[0]
    panel.locator(f'.neighbours [data-open-feature="{first}"]').click()
    expect(panel.locator("h2")).to_contain_text(f"Feature #{first}")
    # a token's feature opens its page
    tok = page.locator(f'.tok[data-request-id="{rid}"]').first
    tok.click()
    index = panel_features(page)[0][0]
    page.locator(f'#feature-panel .feat[data-feature-index="{index}"]').click()
    expect(panel.locator("h2")).to_contain_text(f"Feature #{index}")
    assert not p.errors, p.errors


def test_inspect_mode(server, open_page):
    from playwright.sync_api import expect

    p = open_page(f"{server.features}/")
    page = p.page
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    text = "The bay at dusk."
    page.click("#inspect-toggle")
    expect(page.locator("#chat-form")).to_be_hidden()
    page.fill("#inspect-input", text)
    page.click("#inspect-run")
    turn = page.locator(".turn.inspected")
    expect(turn).to_have_count(1)
    api = httpx.post(f"{server.features}/v1/features/inspect", json={"text": text}, timeout=60).json()
    toks = turn.locator(".tok")
    expect(toks).to_have_count(len(api["tokens"]))
    assert turn.locator(".tok").evaluate_all("els => els.map(e => e.textContent)") == \
        [t["token"] for t in api["tokens"]]
    toks.nth(2).hover()
    assert [f[0] for f in panel_features(page)] == [f["index"] for f in api["tokens"][2]["top_features"]]
    page.click("#inspect-toggle")
    expect(page.locator("#chat-form")).to_be_visible()
    assert not p.errors, p.errors
