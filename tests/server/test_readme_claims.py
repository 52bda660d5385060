"""README claims about the chat port, checked through a real server with real clients: ``/health`` on the chat
port, stop strings in a stream, EOS ending a generation, and a mid-range ``top_p``."""

from __future__ import annotations

import time

import httpx
import pytest

from neuroscope.core.decode import generate
from neuroscope.core.protocol import GenerationParams
from neuroscope.server.prompt import render_prompt
from tests.support.reference import load_backend
from tests.support.sampling import next_token_logits, outside_nucleus
from tests.support.server import SSEReader

MSG = [{"role": "user", "content": "Tell me about the river and the old mill."}]
EOS_TEXT = ("<eos>", "<end_of_turn>")


def _events(server, request_id: str) -> list[tuple[str, dict]]:
    """Every event of one request, replayed from its start (the server keeps the last 32 requests)."""
    reader = SSEReader(f"{server.features}/v1/features/stream?request_id={request_id}", until_complete=1)
    return reader.start().wait(30)


def _health(server) -> dict:
    r = httpx.get(f"{server.chat}/health", timeout=10)
    assert r.status_code == 200
    return r.json()


def _wait_for(predicate, what: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------- /health
def test_chat_health_reports_model_backend_and_queue_length(server):
    """README: ``GET /health`` (chat port) gives the model, the backend and the queue length."""
    idle = _health(server)
    assert idle["status"] == "ok"
    assert idle["model"] == server.model_id
    assert idle["backend"] == server.backend.name
    assert idle["sae_dtype"] == "float32"
    assert idle["queued"] == 0

    # one generation runs and three more wait behind it: the queue length says so, and empties once they end
    url = f"{server.chat}/v1/chat/completions"
    with httpx.Client(timeout=60) as client:
        def open_stream(seed: int) -> httpx.Response:
            body = {"messages": MSG, "max_tokens": 900, "stream": True, "temperature": 1.0, "seed": seed}
            return client.send(client.build_request("POST", url, json=body), stream=True)  # headers: submitted

        streams = [open_stream(1)]
        try:
            for line in streams[0].iter_lines():  # the first request is generating
                if '"content": "' in line and '"content": ""' not in line:
                    break
            streams += [open_stream(seed) for seed in (2, 3, 4)]
            busy = _health(server)
            assert 1 <= busy["queued"] <= 3, busy
            assert busy["model"] == server.model_id and busy["backend"] == server.backend.name
        finally:
            for r in streams:  # leaving cancels each request, running or queued
                r.close()
    done = _wait_for(lambda: (h := _health(server))["completed"] == idle["completed"] + 4 and h,
                     "the four requests to end")
    assert done["queued"] == 0


# ---------------------------------------------------------------------------------------------- stop in a stream
def test_stop_string_in_a_stream(openai_client, server):
    """README: with a ``stop`` string the chat text ends before it (``finish_reason`` "stop") while the feature
    stream still shows the token that completed it — here for ``stream=True``."""
    base = openai_client.chat.completions.create(model=server.model_id, messages=MSG, max_tokens=30, temperature=0)
    text = base.choices[0].message.content
    stop = text[5:8]
    assert len(stop) == 3 and stop.strip(), f"need a usable stop string from {text!r}"
    cut = text[: text.index(stop)]

    chunks = list(openai_client.chat.completions.create(
        model=server.model_id, messages=MSG, max_tokens=30, temperature=0, stop=[stop, "zzzz-never"], stream=True,
        stream_options={"include_usage": True},
    ))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == cut
    assert stop not in streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert usage.completion_tokens < 30

    events = _events(server, chunks[0].id)
    tokens = [d for e, d in events if e == "feature_activation"]
    shown = "".join(d["token"] for d in tokens)
    assert len(tokens) == usage.completion_tokens
    assert shown == text[: len(shown)], "the feature stream shows the same tokens as the unstopped run"
    assert shown.startswith(cut + stop), f"the feature stream must show the stop string {stop!r}: {shown!r}"
    assert stop not in shown[: -len(tokens[-1]["token"])], "the last token event is the one that completed it"
    assert events[-1] == ("generation_complete", {"request_id": chunks[0].id, "tokens": usage.completion_tokens,
                                                  "prompt_tokens": usage.prompt_tokens, "finish_reason": "stop",
                                                  "steering": None})


# ---------------------------------------------------------------------------------------------- EOS
@pytest.fixture(scope="module")
def eos_case(server, tiny_fixture):
    """A seed for which the tiny model samples ``<eos>`` or ``<end_of_turn>`` after a few tokens, found with a
    second instance of the server's backend (same backend, same seed → same tokens)."""
    backend, info, _ = load_backend(server.backend.name, tiny_fixture)
    try:
        prompt = render_prompt(info.tokenizer, MSG)
        eos = set(info.eos_token_ids)
        assert eos == {1, 5}
        for seed in range(200):
            params = GenerationParams(max_tokens=48, temperature=1.0, seed=seed)  # no EOS ids: never stops early
            tokens = [s.token_id for s in generate(backend, prompt, params)]
            first = next((i for i, t in enumerate(tokens) if t in eos), None)
            if first is not None and 3 <= first < 47:
                return {"seed": seed, "tokens": tokens[: first + 1], "prompt": prompt}
    finally:
        backend.close()
    pytest.fail("no seed in 0..199 made the tiny model emit EOS within 48 tokens")


def test_eos_ends_a_generation_through_the_server(openai_client, server, eos_case):
    """README: ``finish_reason`` is "stop" when the model ends its turn; EOS adds no text; its features are one
    last ``"special": true`` event with an empty token, before ``generation_complete``."""
    tok = server.info.tokenizer
    seed, tokens = eos_case["seed"], eos_case["tokens"]
    n = len(tokens) - 1  # the tokens before EOS
    # held-back bytes of an unfinished character before EOS are dropped (they belong to no visible text)
    expected = tok.decode(tokens[:n], skip_special_tokens=True).rstrip("\ufffd")
    kw = dict(model=server.model_id, messages=MSG, max_tokens=48, temperature=1.0, seed=seed)

    r = openai_client.chat.completions.create(**kw)
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == n
    assert r.choices[0].message.content == expected
    assert not any(s in r.choices[0].message.content for s in EOS_TEXT)

    chunks = list(openai_client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.completion_tokens == n

    special = set(tok.all_special_ids) | {1, 5}
    for rid in (r.id, chunks[0].id):
        events = _events(server, rid)
        feats = [d for e, d in events if e == "feature_activation"]
        assert [d["token_id"] for d in feats] == tokens
        assert [d["token_index"] for d in feats] == list(range(n + 1))
        assert [d["special"] for d in feats] == [t in special for t in tokens]
        assert "".join(d["token"] for d in feats) == expected
        last_name, last = events[-2]
        assert last_name == "feature_activation" and last["special"] is True and last["token"] == ""
        assert last["token_id"] in (1, 5) and last["top_features"], "the EOS step's features are published"
        assert events[-1] == ("generation_complete", {"request_id": rid, "tokens": n,
                                                      "prompt_tokens": r.usage.prompt_tokens,
                                                      "finish_reason": "stop", "steering": None})


# ---------------------------------------------------------------------------------------------- top_p
def test_mid_range_top_p_through_the_server(openai_client, server, tiny_fixture):
    """``top_p=0.5``: seeded (same seed, same text), sampled (not greedy), and every token the feature stream
    reports (EOS included, when the model draws it) lies in the nucleus of transformers' logits."""
    kw = dict(model=server.model_id, messages=MSG, max_tokens=24)
    greedy = openai_client.chat.completions.create(**kw, temperature=0).choices[0].message.content
    prompt = render_prompt(server.info.tokenizer, MSG)
    # a bf16 model (torch-cuda's default) moves the boundary of the float32 reference nucleus a little
    tol = 1e-4 if server.info.dtype == "float32" else 2e-2
    checked = 0
    for seed in (7, 8):
        a = openai_client.chat.completions.create(**kw, temperature=1.0, top_p=0.5, seed=seed)
        b = openai_client.chat.completions.create(**kw, temperature=1.0, top_p=0.5, seed=seed)
        assert a.choices[0].message.content == b.choices[0].message.content
        assert a.choices[0].message.content != greedy

        tokens = [d["token_id"] for e, d in _events(server, a.id) if e == "feature_activation"]
        assert len(tokens) == a.usage.completion_tokens + (a.choices[0].finish_reason == "stop")
        logits = next_token_logits(tiny_fixture.model_dir, prompt, tokens)
        assert outside_nucleus(logits, tokens, 1.0, 0.5, tol) == [], f"seed {seed}"
        checked += len(tokens)
    assert checked >= 16, "too few sampled tokens to tell a nucleus from the full distribution"
