"""A chat request with an image content part gets an OpenAI-shaped 400 saying the model is served as text only
(Gemma 3 4B and up are multimodal checkpoints; Neuroscope serves text), from the parser and from a real server."""

from __future__ import annotations

import httpx
import pytest

from neuroscope.server.errors import APIError
from neuroscope.server.schema import parse_chat_request

IMAGES = [
    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},  # OpenAI chat completions
    {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},  # OpenAI responses
    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
]


@pytest.mark.parametrize("part", IMAGES, ids=[p["type"] for p in IMAGES])
def test_an_image_part_is_refused_as_text_only(part):
    body = {"messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}]}
    with pytest.raises(APIError) as exc:
        parse_chat_request(body, served_model="google/gemma-3-4b-it")
    err = exc.value
    assert err.status == 400 and err.param == "messages[1].content[1]" and err.code == "unsupported_value"
    assert "images are not supported" in err.message and "google/gemma-3-4b-it is served as text only" in err.message
    assert repr(part["type"]) in err.message


def test_other_non_text_parts_keep_the_generic_message():
    body = {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}
    with pytest.raises(APIError) as exc:
        parse_chat_request(body, served_model="m")
    assert "'input_audio' is not supported (text only)" in exc.value.message


def test_the_server_answers_an_image_with_an_openai_shaped_400(server):
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, IMAGES[0]]}]}
    r = httpx.post(f"{server.chat}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "messages[0].content[1]"
    assert "images are not supported" in error["message"] and "served as text only" in error["message"]
    ok = httpx.post(f"{server.chat}/v1/chat/completions", timeout=60,
                    json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert ok.status_code == 200  # the server goes on
