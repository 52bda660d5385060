"""The live viewer in a real browser: it loads cleanly, streams a chat, and shows the features the SSE stream
carries (read here independently of the page) on the right tokens."""

from __future__ import annotations

import math
import re

import pytest

from tests.support.server import SSEReader
from tests.viewer.pages import alpha, chat, drawn, panel_features, rendered, sse_events, token

pytestmark = pytest.mark.usefixtures("browser")


def test_page_loads_without_errors(viewer_server, open_page):
    from playwright.sync_api import expect

    p = open_page(f"{viewer_server.features}/")
    expect(p.page.locator("#connection")).to_have_attribute("data-state", "connected")
    expect(p.page.locator("#model-info")).to_contain_text(f"{viewer_server.model_id} · torch-cpu")
    expect(p.page.locator("#model-info")).to_contain_text("layer 2 · 256 features · top-8")
    assert p.page.title() == "Neuroscope"
    assert p.errors == []


def test_chat_streams_every_token_with_its_features(viewer_server, open_page):
    from playwright.sync_api import expect

    reader = SSEReader(f"{viewer_server.features}/v1/features/stream").start()
    p = open_page(f"{viewer_server.features}/")
    expect(p.page.locator("#connection")).to_have_attribute("data-state", "connected")
    rid = chat(p.page, "Write a haiku about autumn.", max_tokens=24)
    events = sse_events(reader, rid)
    assert len(events) == 24
    # every token is on the page, in order, with the text the stream gave it
    assert rendered(p.page, rid) == [(e["token_index"], drawn(e["token"])) for e in events]
    # hovering a token shows its own top-k: the features, labels and activations the stream carried
    for e in (events[0], events[11], events[-1]):
        token(p.page, rid, e["token_index"]).hover()
        expect(p.page.locator("#feature-panel .feat").first).to_have_attribute(
            "data-feature-index", str(e["top_features"][0]["index"]))
        shown = panel_features(p.page)
        assert [(i, label) for i, label, _ in shown] == [(f["index"], f["label"]) for f in e["top_features"]]
        assert [a for _, _, a in shown] == pytest.approx([f["activation"] for f in e["top_features"]], abs=0.006)
    # shading: opacity 0.05 + 0.95·log10(1 + 9·a/max), a = the token's top activation, max over the conversation
    top = [e["top_features"][0]["activation"] if e["top_features"] else 0 for e in events]
    for e, a in zip(events[:6], top):
        want = 0.05 + 0.95 * math.log10(1 + 9 * a / max(top))
        assert alpha(p.page, token(p.page, rid, e["token_index"])) == pytest.approx(want, abs=0.003)
    assert p.errors == []


def test_clicking_a_feature_highlights_it_everywhere(viewer_server, open_page):
    from playwright.sync_api import expect

    reader = SSEReader(f"{viewer_server.features}/v1/features/stream").start()
    p = open_page(f"{viewer_server.features}/")
    expect(p.page.locator("#connection")).to_have_attribute("data-state", "connected")
    rid = chat(p.page, "The cat sat on the mat.", max_tokens=24)
    events = sse_events(reader, rid)
    token(p.page, rid, 5).click()  # pins the token's features in the panel
    feature = events[5]["top_features"][0]
    p.page.locator(f'#feature-panel .feat[data-feature-index="{feature["index"]}"]').click()
    lit = p.page.locator(".tok.lit").evaluate_all("els => els.map(e => Number(e.dataset.tokenIndex))")
    having = [e for e in events if any(f["index"] == feature["index"] for f in e["top_features"])]
    assert lit == [e["token_index"] for e in having] and 5 in lit
    detail = p.page.locator("#feature-detail")
    expect(detail).to_be_visible()
    expect(detail).to_contain_text(f"Feature #{feature['index']}")
    expect(detail.locator(".flabel-big")).to_have_text(feature["label"])
    expect(detail).to_contain_text(f"in the top-k of {len(having)} of 24 tokens")
    # shaded by that feature now: the strongest of its tokens is fully opaque, a token without it is faint
    acts = {e["token_index"]: f["activation"]
            for e in having for f in e["top_features"] if f["index"] == feature["index"]}
    strongest = max(acts, key=acts.get)
    assert alpha(p.page, token(p.page, rid, strongest)) == pytest.approx(1.0, abs=0.003)
    others = [e["token_index"] for e in events if e["token_index"] not in acts]
    assert others and alpha(p.page, token(p.page, rid, others[0])) == pytest.approx(0.05, abs=0.003)
    # clicking it again clears the highlight
    p.page.locator("#feature-clear").click()
    expect(p.page.locator(".tok.lit")).to_have_count(0)
    expect(detail).to_be_hidden()
    assert p.errors == []


def test_most_active_features_over_the_conversation(viewer_server, open_page):
    from playwright.sync_api import expect

    reader = SSEReader(f"{viewer_server.features}/v1/features/stream").start()
    p = open_page(f"{viewer_server.features}/")
    expect(p.page.locator("#connection")).to_have_attribute("data-state", "connected")
    rids = [chat(p.page, "Hello there.", max_tokens=10), chat(p.page, "And again?", max_tokens=10)]
    sums: dict[int, float] = {}
    for rid in rids:
        for e in sse_events(reader, rid):
            for f in e["top_features"]:
                sums[f["index"]] = sums.get(f["index"], 0) + f["activation"]
    best = sorted(sums, key=sums.get, reverse=True)[:3]
    shown = p.page.locator("#top-features .feat").evaluate_all("els => els.map(e => Number(e.dataset.featureIndex))")
    assert shown[:3] == best
    # the second turn was sent with the first one's history
    assert p.page.locator(".turn").count() == 2
    assert p.errors == []


def test_prompt_tokens_on_request(viewer_server, open_page):
    from playwright.sync_api import expect

    reader = SSEReader(f"{viewer_server.features}/v1/features/stream?include_prompt=true").start()
    p = open_page(f"{viewer_server.features}/")
    expect(p.page.locator("#connection")).to_have_attribute("data-state", "connected")
    rid = chat(p.page, "Paris, Berlin, Tokyo", max_tokens=4, prompt=True)
    prompt = sse_events(reader, rid, prompt=True)
    assert prompt and rendered(p.page, rid, prompt=True) == [(e["token_index"], drawn(e["token"])) for e in prompt]
    assert rendered(p.page, rid, prompt=True)[0][1] == "<bos>"
    # hovering a prompt token shows that token's features
    e = prompt[len(prompt) // 2]
    token(p.page, rid, e["token_index"], prompt=True).hover()
    expect(p.page.locator("#feature-panel .feat").first).to_have_attribute(
        "data-feature-index", str(e["top_features"][0]["index"]))
    # and without the box ticked, none
    rid2 = chat(p.page, "Paris, Berlin, Tokyo", max_tokens=4, prompt=False)
    assert rendered(p.page, rid2, prompt=True) == []
    assert p.errors == []


def test_text_is_shown_as_text(viewer_server, open_page):
    from playwright.sync_api import expect

    p = open_page(f"{viewer_server.features}/")
    expect(p.page.locator("#connection")).to_have_attribute("data-state", "connected")
    evil = '<img src="/x" onerror="window.pwned = 1">'
    chat(p.page, evil, max_tokens=3)
    assert p.page.locator(".msg.user .text").last.text_content() == evil
    assert p.page.locator("#conversation img").count() == 0
    assert p.errors == []


def test_special_tokens_are_drawn_by_their_own_name_and_only_the_finishing_one_reads_eos(viewer_server, open_page):
    """A <start_of_turn> or <pad> mid-reply is itself, not "EOS"; the special token that ended the reply is."""
    p = open_page(f"{viewer_server.features}/")
    shown = p.page.evaluate("""async () => {
        const { Conversation } = await import("/conversation.js");
        const conv = new Conversation(document.createElement("div"));
        const f = [{ index: 3, label: "x", activation: 2.5 }];
        const reply = (turn) => [...turn.reply.children].map((e) => [e.className, e.textContent]);
        const ended = conv.addTurn("hi", false), cut = conv.addTurn("hi", false);
        let i = 0;
        for (const [token, special, name] of [["Hi", false, undefined], ["", true, "<start_of_turn>"],
                                              ["", true, "<pad>"], ["", false, undefined], ["", true, "<eos>"]]) {
            conv.add(ended, { request_id: "r", token_index: i++, token, prompt: false, special,
                              special_token: name, top_features: f });
        }
        conv.finish(ended, "stop");
        conv.add(cut, { request_id: "s", token_index: 0, token: "", prompt: false, special: true,
                        special_token: "<pad>", top_features: f });
        conv.finish(cut, "length");  // cut short on a special token: it was not the end of sequence
        return [reply(ended), reply(cut)];
    }""")
    assert shown == [[["tok", "Hi"], ["tok special", "<start_of_turn>"], ["tok special", "<pad>"], ["tok empty", ""],
                      ["tok special", "EOS"]],
                     [["tok special", "<pad>"]]]
    assert p.errors == []


def test_the_stream_names_special_tokens(viewer_server):
    """A special token forced mid-reply carries its name for the viewer to draw (its text is empty)."""
    import httpx

    tok = viewer_server.info.tokenizer
    start = tok.convert_tokens_to_ids("<start_of_turn>")
    reader = SSEReader(f"{viewer_server.features}/v1/features/stream").start()
    r = httpx.post(f"{viewer_server.chat}/v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0,
                         "logit_bias": {str(start): 100}})
    assert r.status_code == 200, r.text
    events = sse_events(reader, r.json()["id"])
    assert [(e["token"], e["special"], e.get("special_token")) for e in events] == [("", True, "<start_of_turn>")] * 2


def test_control_characters_are_visible_symbols_and_bidi_text_stays_in_its_token(viewer_server, open_page):
    p = open_page(f"{viewer_server.features}/")
    page = p.page
    shown = page.evaluate(r"""async () => {
        const { Conversation } = await import("/conversation.js");
        const root = document.createElement("div");
        document.querySelector("#conversation").append(root);
        const conv = new Conversation(root);
        const turn = conv.addTurn("a\u202eb\u0007", false);
        let i = 0;
        for (const token of ["x\u0001", "\r\n", "\u007f\u0085", "ab\u202ecd", "ef", "gh"]) {
            conv.add(turn, { request_id: "b", token_index: i++, token, prompt: false, top_features: [] });
        }
        const toks = [...turn.reply.children];
        return {
            texts: toks.map((e) => e.textContent),
            user: turn.root.querySelector(".msg.user .text").textContent,
            bidi: [toks[3], turn.reply, turn.root.querySelector(".msg.user .text")].map(
                (e) => getComputedStyle(e).unicodeBidi),
            lefts: toks.slice(3).map((e) => e.getBoundingClientRect().left),
        };
    }""")
    assert shown["texts"] == ["x\u2401", "\u240d\n", "\u2421\\x85", "ab\u202ecd", "ef", "gh"]
    assert shown["user"] == "a\u202eb\u2407"
    # the tokens after the one holding U+202E still run left to right
    assert shown["lefts"] == sorted(shown["lefts"]) and len(set(shown["lefts"])) == 3
    assert shown["bidi"] == ["isolate"] * 3
    assert p.errors == []


def test_a_refused_chat_shows_the_server_error(viewer_server, open_page):
    from playwright.sync_api import expect

    p = open_page(f"{viewer_server.features}/")
    expect(p.page.locator("#connection")).to_have_attribute("data-state", "connected")
    p.page.fill("#max-tokens", "100000")  # beyond the tiny model's 1024 positions: the chat API says 400
    p.page.fill("#chat-input", "hello")
    p.page.press("#chat-input", "Enter")
    expect(p.page.locator("#error-bar")).to_be_visible()
    expect(p.page.locator("#error-text")).to_contain_text("maximum context length is 1024 tokens")
    expect(p.page.locator(".turn .turn-error")).to_contain_text("maximum context length")
    expect(p.page.locator(".turn .turn-status")).to_have_text("failed")
    # the page keeps working: the next chat goes through
    assert chat(p.page, "hello", max_tokens=3)


def test_label_source_and_score_from_the_chain(viewer_server, open_page):
    """Tooltips and the feature panel say where a label comes from (``/v1/features/labels?detail=true``): the
    fixture's label file names the even features, the rest are numeric."""
    from playwright.sync_api import expect

    reader = SSEReader(f"{viewer_server.features}/v1/features/stream").start()
    p = open_page(f"{viewer_server.features}/")
    expect(p.page.locator("#connection")).to_have_attribute("data-state", "connected")
    rid = chat(p.page, "Numbers: 0 1 2 3", max_tokens=8)
    events = sse_events(reader, rid)
    token(p.page, rid, 0).hover()
    first = events[0]["top_features"][0]
    row = p.page.locator(f'#feature-panel .feat[data-feature-index="{first["index"]}"]')
    want = "labels-path" if first["index"] % 2 == 0 else "numeric"
    expect(row).to_have_attribute("title", re.compile(rf"· source {want}$"))
    row.click()
    expect(p.page.locator("#feature-detail .facts")).to_contain_text(f"label source{want}")
    assert p.errors == []


def test_the_feature_panel_shows_the_labelers_description(viewer_server, open_page):
    p = open_page(f"{viewer_server.features}/")
    shown = p.page.evaluate("""async () => {
        const { Conversation } = await import("/conversation.js");
        const { renderFeature, setLabelDetail } = await import("/panels.js");
        const conv = new Conversation(document.createElement("div"));
        const turn = conv.addTurn("hi", false);
        conv.add(turn, { request_id: "r", token_index: 0, token: "Bonjour", prompt: false,
                         top_features: [{ index: 5, label: "French text", activation: 3 }] });
        setLabelDetail({ "5": { label: "French text", source: "autointerp", score: 0.9,
                                description: "Fires on French words inside English prose." } });
        conv.select(5);
        const panel = document.createElement("div");
        renderFeature(panel, conv, null);
        const about = panel.querySelector(".fdescription");
        return about ? about.textContent : null;
    }""")
    assert shown == "Fires on French words inside English prose."
    assert p.errors == []
