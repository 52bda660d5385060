"""Bad requests on the chat port get OpenAI-shaped errors with the right status; the server stays up."""

from __future__ import annotations

import httpx
import pytest

OK = [{"role": "user", "content": "hi"}]

CASES = [
    # (id, body or raw bytes, status, param, code)
    ("malformed-json", b'{"messages": [', 400, None, "invalid_json"),
    ("not-an-object", b"[1, 2]", 400, None, "invalid_type"),
    ("missing-messages", {"max_tokens": 3}, 400, "messages", "missing_required_parameter"),
    ("empty-messages", {"messages": []}, 400, "messages", "empty_array"),
    ("messages-not-list", {"messages": "hi"}, 400, "messages", "invalid_type"),
    ("unknown-role", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", "invalid_value"),
    ("content-wrong-type", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", "invalid_type"),
    ("temperature-type", {"messages": OK, "temperature": "hot"}, 400, "temperature", "invalid_type"),
    ("temperature-range", {"messages": OK, "temperature": 9}, 400, "temperature", "invalid_value"),
    ("max-tokens-float", {"messages": OK, "max_tokens": 2.5}, 400, "max_tokens", "invalid_type"),
    ("max-tokens-zero", {"messages": OK, "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ("max-tokens-negative", {"messages": OK, "max_completion_tokens": -4}, 400, "max_completion_tokens", "invalid_value"),
    ("max-tokens-absurd", {"messages": OK, "max_tokens": 10**12}, 400, "max_tokens", "context_length_exceeded"),
    ("stream-type", {"messages": OK, "stream": "yes"}, 400, "stream", "invalid_type"),
    ("n-2", {"messages": OK, "n": 2}, 400, "n", "unsupported_value"),
    ("stop-type", {"messages": OK, "stop": 7}, 400, "stop", "invalid_type"),
    ("unknown-model", {"model": "gpt-4o", "messages": OK}, 404, "model", "model_not_found"),
    ("roles-not-alternating", {"messages": [{"role": "assistant", "content": "x"}]}, 400, "messages", "invalid_value"),
]


@pytest.mark.parametrize("body,status,param,code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_gets_an_openai_error(server, body, status, param, code):
    url = f"{server.chat}/v1/chat/completions"
    if isinstance(body, bytes):
        r = httpx.post(url, content=body, headers={"content-type": "application/json"})
    else:
        r = httpx.post(url, json={"model": server.model_id, **body} if "model" not in body else body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and err["type"] in ("invalid_request_error",)
    assert err["param"] == param and err["code"] == code


def test_prompt_longer_than_the_context(server):
    long = "the river bends around the old mill " * 400  # far beyond the tiny model's 1024 positions
    r = httpx.post(f"{server.chat}/v1/chat/completions", json={"messages": [{"role": "user", "content": long}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and "1024" in err["message"]


def test_wrong_method_and_unknown_path(server):
    r = httpx.get(f"{server.chat}/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.get(f"{server.chat}/v2/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_openai_client_raises_on_bad_input_and_server_keeps_serving(openai_client, server):
    import openai

    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="nope", messages=OK)
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model=server.model_id, messages=OK, n=3)
    r = openai_client.chat.completions.create(model=server.model_id, messages=OK, max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3
