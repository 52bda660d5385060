"""The feature port: one event per generated token, joined to the chat by request id."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.support.server import RunningServer, SSEReader

MSG = [{"role": "user", "content": "Write a haiku about autumn."}]


def test_one_event_per_token_in_order_concatenating_to_the_text(openai_client, server):
    reader = SSEReader(f"{server.features}/v1/features/stream").start()
    r = openai_client.chat.completions.create(model=server.model_id, messages=MSG, max_tokens=40, temperature=0)
    # the unfiltered stream never ends by itself: read until this request completed
    import time

    deadline = time.monotonic() + 30
    while not reader.of(r.id, "generation_complete") and time.monotonic() < deadline:
        time.sleep(0.02)
    events = reader.of(r.id)
    assert len(events) == r.usage.completion_tokens == 40
    assert [e["token_index"] for e in events] == list(range(40))
    assert "".join(e["token"] for e in events) == r.choices[0].message.content
    first = events[0]
    assert set(first) >= {"token_index", "token", "layer", "top_features", "request_id", "l0"}
    assert first["layer"] == 2 and not first["prompt"]
    assert 0 < len(first["top_features"]) <= 8
    for f in first["top_features"]:
        assert set(f) == {"index", "label", "activation"} and f["activation"] > 0
        assert f["label"] == (f"random feature {f['index']}" if f["index"] % 2 == 0 else f"feature_{f['index']}")
    acts = [f["activation"] for f in first["top_features"]]
    assert acts == sorted(acts, reverse=True)
    (done,) = reader.of(r.id, "generation_complete")
    assert done == {"request_id": r.id, "tokens": 40, "prompt_tokens": r.usage.prompt_tokens, "finish_reason": "length",
                    "steering": None}
    assert all(e["steered"] is False for e in events)
    # the complete event follows the last token event
    names = [(e, d["request_id"]) for e, d in reader.events if d["request_id"] == r.id]
    assert names[-1] == ("generation_complete", r.id)


def test_prompt_events_only_for_subscribers_that_ask(openai_client, server):
    with_prompt = SSEReader(f"{server.features}/v1/features/stream?include_prompt=true").start()
    without = SSEReader(f"{server.features}/v1/features/stream").start()
    r = openai_client.chat.completions.create(model=server.model_id, messages=MSG, max_tokens=5, temperature=0)
    filtered = SSEReader(f"{server.features}/v1/features/stream?request_id={r.id}&include_prompt=1", until_complete=1)
    filtered.start().wait()
    prompt_events = [d for e, d in filtered.events if e == "feature_activation" and d["prompt"]]
    assert len(prompt_events) == r.usage.prompt_tokens
    assert [d["token_index"] for d in prompt_events] == list(range(r.usage.prompt_tokens))
    assert "".join(d["token"] for d in prompt_events).startswith("<bos><start_of_turn>user\nWrite a haiku")
    import time

    deadline = time.monotonic() + 30
    while not without.of(r.id, "generation_complete") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [d for d in without.of(r.id) if d["prompt"]]
    assert len(without.of(r.id)) == 5
    assert len([d for d in with_prompt.of(r.id) if d["prompt"]]) == r.usage.prompt_tokens


def test_two_concurrent_chats_are_joined_by_request_id(openai_client, server):
    results = {}

    def chat(name, content, n):
        stream = openai_client.chat.completions.create(
            model=server.model_id, messages=[{"role": "user", "content": content}], max_tokens=n, stream=True,
            temperature=0,
        )
        chunks = list(stream)
        results[name] = (chunks[0].id, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices))

    threads = [threading.Thread(target=chat, args=("a", "The cat sat on the mat.", 25)),
               threading.Thread(target=chat, args=("b", "Bonjour, comment allez-vous?", 15))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(results) == {"a", "b"} and results["a"][0] != results["b"][0]
    for name, n in (("a", 25), ("b", 15)):
        rid, text = results[name]
        # subscribing late with ?request_id= replays that request's events from its start, then ends
        reader = SSEReader(f"{server.features}/v1/features/stream?request_id={rid}", until_complete=1).start()
        events = reader.wait()
        tokens = [d for e, d in events if e == "feature_activation"]
        assert all(d["request_id"] == rid for _, d in events)
        assert len(tokens) == n
        assert "".join(d["token"] for d in tokens) == text
        assert events[-1][0] == "generation_complete"


def test_labels_endpoint(server):
    body = httpx.get(f"{server.features}/v1/features/labels").json()
    assert body["count"] == 256 and len(body["labels"]) == 256
    assert body["labels"]["0"] == "random feature 0"
    assert body["labels"]["1"] == "feature_1"


def test_bad_query_on_feature_stream(server):
    r = httpx.get(f"{server.features}/v1/features/stream?include_prompt=maybe")
    assert r.status_code == 400 and "include_prompt" in r.json()["error"]["message"]
    assert httpx.get(f"{server.features}/nope").status_code == 404


def test_unknown_request_id_is_a_404(server):
    r = httpx.get(f"{server.features}/v1/features/stream?request_id=chatcmpl-nope")
    assert r.status_code == 404 and r.json()["error"]["param"] == "request_id"


def test_subscribing_to_a_queued_request_gets_all_its_events(tiny_fixture):
    # a gate holds the generation thread on a first request, so the second one is surely queued when its
    # stream is followed, and the first one's events surely come while that subscriber listens
    gate = threading.Event()
    srv = RunningServer("torch-cpu", tiny_fixture, gate=gate)
    pool = ThreadPoolExecutor(1)
    try:
        blocker = {"messages": [{"role": "user", "content": "The cat sat on the mat."}], "max_tokens": 20,
                   "temperature": 0}
        first = pool.submit(httpx.post, f"{srv.chat}/v1/chat/completions", json=blocker, timeout=60)
        assert srv.backend.entered.wait(30), "the first request never started"
        body = {"messages": MSG, "max_tokens": 12, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{srv.chat}/v1/chat/completions", json=body, timeout=60) as r:
            rid = r.headers["x-request-id"]  # known before this request has produced anything
            assert httpx.get(f"{srv.chat}/health").json()["queued"] == 1  # it waits behind the first
            reader = SSEReader(f"{srv.features}/v1/features/stream?request_id={rid}", until_complete=1).start()
            gate.set()
            text = "".join(
                json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                for line in r.iter_lines()
                if line.startswith("data: {") and '"choices": [{' in line
            )
        events = reader.wait()
        assert first.result(60).json()["usage"]["completion_tokens"] == 20
    finally:
        gate.set()
        pool.shutdown()
        srv.stop()
    tokens = [d for e, d in events if e == "feature_activation"]
    assert {d["request_id"] for _, d in events} == {rid}
    assert [d["token_index"] for d in tokens] == list(range(12))
    assert "".join(d["token"] for d in tokens) == text


def test_many_concurrent_chats_all_complete_and_keep_their_own_features(openai_client, server):
    prompts = ["The cat sat on the mat.", "What is the capital of France?", "Write a haiku about autumn.",
               "Paris, Berlin, Tokyo", "Hello", "Count to ten."]
    results: dict[int, tuple[str, str, int]] = {}

    def chat(i: int) -> None:
        r = openai_client.chat.completions.create(
            model=server.model_id, messages=[{"role": "user", "content": prompts[i]}], max_tokens=8 + i,
            temperature=0,
        )
        results[i] = (r.id, r.choices[0].message.content, r.usage.completion_tokens)

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(len(prompts)))
    assert len({rid for rid, _, _ in results.values()}) == len(prompts)
    for i, (rid, text, n) in results.items():
        # each alone gives the same greedy text: queued requests do not disturb one another
        alone = openai_client.chat.completions.create(
            model=server.model_id, messages=[{"role": "user", "content": prompts[i]}], max_tokens=8 + i,
            temperature=0,
        )
        assert alone.choices[0].message.content == text
        events = SSEReader(f"{server.features}/v1/features/stream?request_id={rid}", until_complete=1).start().wait()
        tokens = [d for e, d in events if e == "feature_activation"]
        assert len(tokens) == n and "".join(d["token"] for d in tokens) == text
