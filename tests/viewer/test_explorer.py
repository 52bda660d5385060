"""The feature explorer in a real browser: search → page → "Steer with this" → a reply marked steered; a
token's feature opens its page; a neighbour opens another; Inspect shows a text's tokens with the same hover
as replies, equal to the API's answer."""

from __future__ import annotations

import json

import httpx
import numpy as np
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


@pytest.fixture(scope="module")
def explored(tiny_fixture, tmp_path_factory):
    """A server whose feature pages find an examples run (density, top and range windows) in the cache."""
    import os

    from neuroscope.config import ServeConfig
    from neuroscope.labels.autointerp import examples
    from neuroscope.labels.autointerp.examples import ExamplesOptions
    from neuroscope.labels.autointerp.generate import load_runtime
    from tests.support.calib import write_corpus

    root = tmp_path_factory.mktemp("explored")
    old = os.environ.get("NEUROSCOPE_CACHE")
    os.environ["NEUROSCOPE_CACHE"] = str(root / "cache")
    try:
        rt = load_runtime(ServeConfig(model=str(tiny_fixture.model_dir), sae_local_path=str(tiny_fixture.sae_path),
                                      sae_layer=tiny_fixture.sae_layer, backend="torch-cpu"), 128, None)
        try:
            run = examples.run(rt, ExamplesOptions(corpus_path=str(write_corpus(root / "corpus", 10)), samples=10,
                                                   per_feature=6, batch_size=4, max_tokens_per_sample=40, pool=5))
            ns = examples.namespace(rt)
        finally:
            rt.backend.close()
        srv = RunningServer("torch-cpu", tiny_fixture, max_tokens=8, explore_namespace=ns)
        yield srv, run.examples
        srv.stop()
    finally:
        if old is None:
            os.environ.pop("NEUROSCOPE_CACHE", None)
        else:
            os.environ["NEUROSCOPE_CACHE"] = old


def test_page_draws_density_and_windows_across_the_range(explored, open_page):
    from playwright.sync_api import expect

    srv, ex = explored
    f = int(np.argmax(ex.fired))
    api = httpx.get(f"{srv.features}/v1/features/{f}").json()
    assert api["density"] and sum(api["density"]["counts"]) == ex.fired[f]
    assert len(api["examples"]) == len(ex.windows(f)) and len(api["quantile_examples"]) == 6
    p = open_page(f"{srv.features}/")
    page = p.page
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    page.fill("#feature-search", f"#{f}")
    page.locator(f'#search-results [data-open-feature="{f}"]').click()
    panel = page.locator("#feature-page")
    expect(panel.locator(".density i")).to_have_count(len(api["density"]["counts"]))
    expect(panel.locator(".example:not([data-quantile])")).to_have_count(min(10, len(api["examples"])))
    quantiles = panel.locator(".example[data-quantile]").evaluate_all("els => els.map(e => Number(e.dataset.quantile))")
    assert quantiles == [e["quantile"] for e in api["quantile_examples"]]
    assert not p.errors, p.errors


def test_the_top_bar_buttons_are_legible(server, open_page):
    """The Inspect toggle sits in the dark top bar: its text must contrast with the bar (WCAG ratio ≥ 4.5)."""
    from playwright.sync_api import expect

    p = open_page(f"{server.features}/")
    page = p.page
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    colours = page.evaluate("""() => {
        const fg = getComputedStyle(document.querySelector('#inspect-toggle')).color;
        let el = document.querySelector('#inspect-toggle'), bg = 'rgba(0, 0, 0, 0)';
        while (el && (bg === 'rgba(0, 0, 0, 0)' || bg === 'transparent')) {
            bg = getComputedStyle(el).backgroundColor; el = el.parentElement;
        }
        return [fg, bg];
    }""")

    def luminance(css: str) -> float:
        r, g, b = (int(x) / 255 for x in css[css.index("(") + 1:css.index(")")].split(",")[:3])
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((luminance(colours[0]), luminance(colours[1])), reverse=True)
    assert (hi + 0.05) / (lo + 0.05) >= 4.5, colours
    expect(page.locator("#inspect-toggle")).to_have_text("Inspect")
