"""Steering through the chat API: validation, the feature stream's flags, and isolation between requests."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.support.server import SSEReader

MSG = [{"role": "user", "content": "What is the capital of France?"}]
ADD = {"features": [{"index": 193, "mode": "add", "value": 8.0}], "positions": "all"}


def _chat(server, steering=None, *, max_tokens=24) -> httpx.Response:
    body = {"model": server.model_id, "messages": MSG, "max_tokens": max_tokens, "temperature": 0}
    if steering is not None:
        body["steering"] = steering
    return httpx.post(f"{server.chat}/v1/chat/completions", json=body, timeout=120)


def _text(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def _events(server, rid: str) -> list[tuple[str, dict]]:
    """A finished request's events, replayed by ``?request_id=``."""
    return SSEReader(f"{server.features}/v1/features/stream?request_id={rid}", until_complete=1).start().wait()


def _chat_with_prompt_events(server, steering) -> tuple[httpx.Response, list[tuple[str, dict]]]:
    """Prompt events are computed only while a subscriber asks for them: subscribe first, then chat."""
    reader = SSEReader(f"{server.features}/v1/features/stream?include_prompt=true").start()
    r = _chat(server, steering)
    rid = r.json()["id"]
    deadline = time.monotonic() + 60
    while not reader.of(rid, "generation_complete") and time.monotonic() < deadline:
        time.sleep(0.02)
    return r, [(e, d) for e, d in reader.events if d["request_id"] == rid]


# ---------------------------------------------------------------------------------------------- validation
def _feature(**kw):
    return {"features": [{"index": 3, "mode": "add", "value": 1.0, **kw}]}


BAD = [
    # (id, steering, param, code)
    ("not-an-object", 5, "steering", "invalid_type"),
    ("unknown-field", {"features": [], "strength": 2}, "steering.strength", "unknown_parameter"),
    ("features-missing", {"positions": "all"}, "steering.features", "missing_required_parameter"),
    ("features-not-a-list", {"features": {"index": 3}}, "steering.features", "invalid_type"),
    ("too-many-features", {"features": [{"index": i, "mode": "add", "value": 1} for i in range(65)]},
     "steering.features", "invalid_value"),
    ("feature-not-an-object", {"features": [3]}, "steering.features[0]", "invalid_type"),
    ("unknown-feature-field", _feature(valeu=2), "steering.features[0].valeu", "unknown_parameter"),
    ("unknown-mode", _feature(mode="multiply"), "steering.features[0].mode", "invalid_value"),
    ("mode-missing", {"features": [{"index": 3, "value": 1}]}, "steering.features[0].mode",
     "missing_required_parameter"),
    ("index-missing", {"features": [{"mode": "add", "value": 1}]}, "steering.features[0].index",
     "missing_required_parameter"),
    ("index-float", _feature(index=3.5), "steering.features[0].index", "invalid_type"),
    ("index-bool", _feature(index=True), "steering.features[0].index", "invalid_type"),
    ("index-string", _feature(index="3"), "steering.features[0].index", "invalid_type"),
    ("index-negative", _feature(index=-1), "steering.features[0].index", "invalid_value"),
    ("index-out-of-range", _feature(index=256), "steering.features[0].index", "invalid_value"),
    ("duplicate-index", {"features": [{"index": 3, "mode": "add", "value": 1}, {"index": 3, "mode": "ablate"}]},
     "steering.features[1].index", "invalid_value"),
    ("value-too-big", _feature(value=1000.5), "steering.features[0].value", "invalid_value"),
    ("value-too-negative", _feature(value=-1001), "steering.features[0].value", "invalid_value"),
    ("value-string", _feature(value="8"), "steering.features[0].value", "invalid_type"),
    ("value-missing", {"features": [{"index": 3, "mode": "clamp"}]}, "steering.features[0].value",
     "missing_required_parameter"),
    ("ablate-with-value", {"features": [{"index": 3, "mode": "ablate", "value": 0}]}, "steering.features[0].value",
     "invalid_value"),
    ("positions-unknown", {**ADD, "positions": "prompt"}, "steering.positions", "invalid_value"),
]


@pytest.mark.parametrize("steering,param,code", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_bad_steering_spec_is_a_400_naming_the_field(server, steering, param, code):
    r = _chat(server, steering, max_tokens=2)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert (err["param"], err["code"]) == (param, code), err
    assert param.removeprefix("steering.") in err["message"] or param == "steering"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_non_finite_value_is_a_400(server, literal):
    """JSON has no NaN, but Python's parser (and many clients' encoders) accept these literals."""
    raw = (
        '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, '
        f'"steering": {{"features": [{{"index": 3, "mode": "clamp", "value": {literal}}}]}}}}'
    )
    r = httpx.post(f"{server.chat}/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == ("steering.features[0].value", "invalid_value")
    assert "finite" in err["message"]


def test_the_out_of_range_message_gives_the_sae_width(server):
    err = _chat(server, _feature(index=256), max_tokens=2).json()["error"]
    assert "256 features (0..255)" in err["message"]


def test_limits_are_inclusive_and_the_server_keeps_serving(server):
    at_limits = {"features": [{"index": i, "mode": "add", "value": 1000.0 if i % 2 else -1000.0} for i in range(64)]}
    assert _chat(server, at_limits, max_tokens=2).status_code == 200
    assert _chat(server, {"features": [{"index": 255, "mode": "ablate"}]}, max_tokens=2).status_code == 200


# ---------------------------------------------------------------------------------------------- behaviour
def test_no_steering_null_steering_and_no_features_are_the_same_plain_request(server):
    plain = _chat(server)
    assert _text(_chat(server, None)) == _text(plain)
    r = httpx.post(f"{server.chat}/v1/chat/completions", timeout=120, json={
        "messages": MSG, "max_tokens": 24, "temperature": 0, "steering": None})
    assert _text(r) == _text(plain)
    empty = _chat(server, {"features": []})
    assert _text(empty) == _text(plain)
    events = _events(server, empty.json()["id"])
    assert all(d["steered"] is False for e, d in events if e == "feature_activation")
    assert events[-1] == ("generation_complete", {**events[-1][1], "steering": None})


def test_steered_events_are_flagged_and_completion_echoes_the_spec(server):
    plain = _text(_chat(server))
    spec = {"features": [{"index": 193, "mode": "add", "value": 8}, {"index": 163, "mode": "ablate"},
                         {"index": 2, "mode": "clamp", "value": 3}]}
    r, events = _chat_with_prompt_events(server, spec)
    assert _text(r) != plain  # the text changed
    tokens = [d for e, d in events if e == "feature_activation"]
    prompt = [d for d in tokens if d["prompt"]]
    assert len(prompt) == r.json()["usage"]["prompt_tokens"] and len(tokens) - len(prompt) == 24
    assert all(d["steered"] is True for d in tokens)  # positions "all": every residual, the prompt's included
    assert "".join(d["token"] for d in tokens if not d["prompt"]) == _text(r)
    # the added feature shows up in the stream
    assert sum(any(f["index"] == 193 for f in d["top_features"]) for d in tokens if not d["prompt"]) >= 12
    name, done = events[-1]
    assert name == "generation_complete"
    assert done["steering"] == {
        "features": [{"index": 193, "mode": "add", "value": 8.0}, {"index": 163, "mode": "ablate"},
                     {"index": 2, "mode": "clamp", "value": 3.0}],
        "positions": "all",
    }


def test_generated_positions_leave_the_prompt_and_the_first_token_unsteered(server):
    plain = _chat(server)
    r, events = _chat_with_prompt_events(server, {**ADD, "positions": "generated"})
    text, base = _text(r), _text(plain)
    assert text != base
    tokens = [d for e, d in events if e == "feature_activation"]
    prompt = [d for d in tokens if d["prompt"]]
    gen = [d for d in tokens if not d["prompt"]]
    assert not any(d["steered"] for d in prompt)
    # the first generated token comes from the unsteered prefill: same token, same features as unsteered
    assert [d["steered"] for d in gen] == [False] + [True] * 23
    plain_events = [d for e, d in _events(server, plain.json()["id"]) if e == "feature_activation"]
    assert (gen[0]["token_id"], gen[0]["top_features"]) == (plain_events[0]["token_id"], plain_events[0]["top_features"])
    assert events[-1][1]["steering"]["positions"] == "generated"


def test_streaming_and_the_openai_client_steer_alike(server, openai_client):
    want = _text(_chat(server, ADD))
    with httpx.stream("POST", f"{server.chat}/v1/chat/completions", timeout=120, json={
            "messages": MSG, "max_tokens": 24, "temperature": 0, "stream": True, "steering": ADD}) as r:
        streamed = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in r.iter_lines() if line.startswith("data: {") and '"choices": [{' in line
        )
    assert streamed == want
    c = openai_client.chat.completions.create(model=server.model_id, messages=MSG, max_tokens=24, temperature=0,
                                              extra_body={"steering": ADD})
    assert c.choices[0].message.content == want


def test_a_steered_request_then_a_plain_one_is_exactly_plain(server):
    before = _chat(server)
    _text(_chat(server, {"features": [{"index": 2, "mode": "clamp", "value": 50}, {"index": 67, "mode": "add",
                                                                                   "value": -20}]}))
    after = _chat(server)
    assert _text(after) == _text(before)
    a = [d for e, d in _events(server, before.json()["id"]) if e == "feature_activation"]
    b = [d for e, d in _events(server, after.json()["id"]) if e == "feature_activation"]
    assert [(d["token_id"], d["top_features"], d["l0"], d["steered"]) for d in a] == [
        (d["token_id"], d["top_features"], d["l0"], d["steered"]) for d in b
    ]


def test_queued_concurrent_requests_each_get_their_own_steering(server):
    specs = [
        None,
        ADD,
        {"features": [{"index": 163, "mode": "ablate"}], "positions": "generated"},  # 163 fires most here
        {"features": [{"index": 2, "mode": "clamp", "value": 6}, {"index": 244, "mode": "add", "value": -4}]},
        ADD,  # the same spec twice: the same text twice
        {"features": [{"index": 193, "mode": "add", "value": -8}]},
    ]
    results: dict[int, tuple[str, str]] = {}

    def chat(i: int) -> None:
        r = _chat(server, specs[i])
        results[i] = (r.json()["id"], _text(r))

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(len(specs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(len(specs)))
    solo = {i: _text(_chat(server, spec)) for i, spec in enumerate(specs)}  # one at a time, afterwards
    assert {i: text for i, (_, text) in results.items()} == solo
    assert results[1][1] == results[4][1]
    assert len({solo[i] for i in (0, 1, 2, 3, 5)}) == 5, "each spec steers the text its own way"
    for i, (rid, text) in results.items():
        events = _events(server, rid)
        tokens = [d for e, d in events if e == "feature_activation"]
        assert "".join(d["token"] for d in tokens) == text
        expected = specs[i] is not None
        assert all(d["steered"] is expected for d in tokens[1:])
        assert (events[-1][1]["steering"] is None) == (specs[i] is None)
        if specs[i] is not None:
            assert [f["index"] for f in events[-1][1]["steering"]["features"]] == [
                f["index"] for f in specs[i]["features"]
            ]
