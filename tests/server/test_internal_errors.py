"""No plain-text 500, ever; the API key never leaves the process; the open ``/health`` tells only counts."""

from __future__ import annotations

import json
import logging
import socket

import httpx
import pytest

from neuroscope.server import redact
from neuroscope.server.access import Access
from neuroscope.server.origins import OriginPolicy
from tests.support.server import RunningServer, SSEReader

KEY = "s3cret-test-key-0123"
MSG = [{"role": "user", "content": "The river bends around the old mill."}]
HUGE = 10**400  # an integer no float can hold


@pytest.fixture(scope="module")
def keyed(tiny_fixture):
    srv = RunningServer("torch-cpu", tiny_fixture, access=Access(OriginPolicy.from_list(()), KEY))
    yield srv
    srv.stop()


def raw(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send ``request`` as it is; (head, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def chat(srv, body: dict, **headers) -> httpx.Response:
    return httpx.post(f"{srv.chat}/v1/chat/completions", json=body, headers=headers, timeout=60)


# ---------------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("field,value,param", [
    ("logit_bias", {"5": HUGE}, "logit_bias"),
    ("logit_bias", {"5": -HUGE}, "logit_bias"),
    ("steering", {"features": [{"index": 3, "mode": "add", "value": HUGE}]}, "steering.features[0].value"),
    ("steering", {"features": [{"index": 3, "mode": "clamp", "value": -HUGE}]}, "steering.features[0].value"),
    ("temperature", HUGE, "temperature"),
    ("top_p", HUGE, "top_p"),
    ("presence_penalty", -HUGE, "presence_penalty"),
], ids=["bias", "negative-bias", "steer-add", "steer-clamp", "temperature", "top_p", "penalty"])
def test_an_integer_too_large_for_a_float_is_a_400_naming_the_field(keyed, field, value, param):
    r = chat(keyed, {"messages": MSG, "max_tokens": 2, field: value}, Authorization=f"Bearer {KEY}")
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json"), r.text
    err = r.json()["error"]
    assert err["param"] == param and "digits" in err["message"]  # described, not repeated in 400 digits


def test_the_smallest_positive_top_p_is_greedy(server):
    # 5e-324 is 0 in float32: the nucleus must still hold the most likely token
    greedy = chat(server, {"messages": MSG, "max_tokens": 6, "temperature": 0}).json()
    for top_p in (5e-324, 1e-45):
        r = chat(server, {"messages": MSG, "max_tokens": 6, "temperature": 1.0, "top_p": top_p, "seed": 3})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == greedy["choices"][0]["message"]["content"]


def test_a_stop_string_too_long_is_a_400_naming_stop(keyed):
    from neuroscope.server.schema import MAX_STOP_LENGTH

    body = {"messages": MSG, "max_tokens": 2, "stop": ["ok", "x" * (MAX_STOP_LENGTH + 1)]}
    r = chat(keyed, body, Authorization=f"Bearer {KEY}")
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
    body["stop"] = ["x" * MAX_STOP_LENGTH]
    assert chat(keyed, body, Authorization=f"Bearer {KEY}").status_code == 200


# ---------------------------------------------------------------------------------------------- the error middleware
def failures(caplog, request_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and request_id in r.getMessage()]


def assert_internal_error(r: httpx.Response, caplog) -> str:
    assert r.status_code == 500 and r.headers["content-type"].startswith("application/json"), r.text
    err = r.json()["error"]
    assert err["type"] == "server_error" and err["code"] == "internal_error"
    request_id = r.headers["x-request-id"]
    assert request_id in err["message"] and "boom" not in err["message"]  # details go to the log only
    (record,) = failures(caplog, request_id)  # logged once, with the traceback
    assert record.exc_info is not None and "boom" in str(record.exc_info[1])
    # aiohttp did not log it a second time
    assert not [r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= logging.ERROR]
    return request_id


def test_an_unexpected_failure_on_the_chat_port_is_a_json_500(server, monkeypatch, caplog):
    import neuroscope.server.chat as chat_module

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(chat_module, "render_prompt", boom)
    caplog.set_level(logging.INFO)
    assert_internal_error(chat(server, {"messages": MSG, "max_tokens": 2}), caplog)
    monkeypatch.undo()
    assert chat(server, {"messages": MSG, "max_tokens": 2}).status_code == 200  # and the server carries on


def test_an_unexpected_failure_on_the_features_port_is_a_json_500(server, monkeypatch, caplog):
    import neuroscope.server.features as features_module

    def boom(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(features_module, "labels_info", boom)
    caplog.set_level(logging.INFO)
    assert_internal_error(httpx.get(f"{server.features}/v1/features/info"), caplog)


def test_the_request_id_of_a_failed_generation_request_is_its_own(server, monkeypatch, caplog):
    # planned (the id its feature events carry is known), then the failure: the 500 names that id
    import neuroscope.server.chat as chat_module

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(chat_module, "_queue_full", lambda st: None)
    monkeypatch.setattr(server.server.engine, "submit", boom)
    caplog.set_level(logging.INFO)
    request_id = assert_internal_error(chat(server, {"messages": MSG, "max_tokens": 2}), caplog)
    assert request_id.startswith("chatcmpl-")


# ---------------------------------------------------------------------------------------------- the key stays in
def leaked(text: str) -> bool:
    # any 6 characters of the key in a row
    return any(KEY[i : i + 6] in text for i in range(len(KEY) - 5))


BAD_REQUESTS = [
    b"GET /v1/features/labels HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode() + b"\x01\r\n\r\n",
    b"GET /v1/features/labels HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\x00" + KEY[6:].encode()
    + b"\r\n\r\n",
    b"GET /v1/features/labels?api_key=" + KEY.encode() + b"\x01 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /v1/features/labels?api_key=" + KEY[:8].encode() + b" " + KEY[8:].encode() + b" HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n\r\n",
    b"GET /v1/features/stream?x=1&api_key=" + KEY.encode() + b"\x7f HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization : Bearer " + KEY.encode() + b"\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", BAD_REQUESTS, ids=[f"request-{i}" for i in range(len(BAD_REQUESTS))])
@pytest.mark.parametrize("port", ["chat", "features"])
def test_a_bad_request_line_or_header_never_echoes_or_logs_the_key(keyed, caplog, request_bytes, port):
    caplog.set_level(logging.DEBUG)  # --log-level debug
    bound = keyed.bound.chat_port if port == "chat" else keyed.bound.features_port
    head, body = raw(bound, request_bytes)
    assert head.split(b" ", 2)[1] == b"400" and b"application/json" in head, head + body
    message = json.loads(body)["error"]["message"]
    assert message.startswith("the request could not be read") and not leaked(message), message
    logged = "\n".join(r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
                       for r in caplog.records)
    assert "bad request" in logged and not leaked(logged), logged


def test_the_pure_python_parser_messages_are_redacted_too():
    # with AIOHTTP_NO_EXTENSIONS aiohttp parses in Python, and its messages quote the raw value differently
    import asyncio

    from aiohttp.http_parser import HttpRequestParserPy

    loop = asyncio.new_event_loop()
    try:
        for request_bytes in BAD_REQUESTS:
            parser = HttpRequestParserPy(type("Proto", (), {"transport": None})(), loop, 2**16)
            with pytest.raises(Exception) as caught:
                parser.feed_data(request_bytes)
            text = redact.parse_error_text(getattr(caught.value, "message", None), caught.value)
            assert text and not leaked(text), (request_bytes, text)
            assert not leaked(redact.redact(str(caught.value)))
    finally:
        loop.close()


def test_a_log_record_that_quotes_a_header_is_redacted(caplog):
    log = logging.getLogger("neuroscope.server")
    redact.install(KEY)
    caplog.set_level(logging.DEBUG)
    try:
        raise ValueError(f"Invalid header: b'Authorization: Bearer {KEY[:5]}\\x01{KEY[5:]}'")
    except ValueError:
        log.exception("parsing %s", f"/v1/x?api_key={KEY}&y=1")
    (record,) = [r for r in caplog.records if r.name == "neuroscope.server"]
    text = caplog.text
    assert "parsing /v1/x?api_key=[redacted]&y=1" in text and "Authorization: [redacted]" in text
    assert not leaked(text) and record.exc_info is None


# ---------------------------------------------------------------------------------------------- the open /health
def test_the_features_health_gives_counts_only(keyed):
    srv = keyed
    auth = {"Authorization": f"Bearer {KEY}"}
    r = chat(srv, {"messages": MSG, "max_tokens": 2, "stream": False}, **auth)
    rid = r.json()["id"]
    reader = SSEReader(f"{srv.features}/v1/features/stream?include_prompt=true&api_key={KEY}").start()
    follower = SSEReader(f"{srv.features}/v1/features/stream?request_id={rid}&api_key={KEY}", until_complete=1)
    follower.start().wait(30)
    srv.wait_subscribers(1)
    health = httpx.get(f"{srv.features}/health")  # no key: it is open
    assert health.status_code == 200
    assert set(health.json()) == {"status", "subscribers", "published", "dropped"}
    assert rid not in health.text and "include_prompt" not in health.text
    assert health.json()["subscribers"] >= 1 and health.json()["published"] > 0
    assert reader.error is None


def test_a_failure_after_a_stream_began_closes_it_and_is_logged_once(server, monkeypatch, caplog):
    import neuroscope.server.features as features_module

    class BrokenJSON:
        @staticmethod
        def dumps(*args, **kwargs):
            raise RuntimeError("boom")

    monkeypatch.setattr(features_module, "json", BrokenJSON)
    caplog.set_level(logging.INFO)
    reader = SSEReader(f"{server.features}/v1/features/stream").start()  # its headers are out: 200
    r = chat(server, {"messages": MSG, "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200  # the chat is not affected
    assert reader.ended.wait(30), "the broken stream was left open"
    monkeypatch.undo()
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1 and "/v1/features/stream" in errors[0].getMessage() and errors[0].exc_info
    assert server.subscribers() == 0 and httpx.get(f"{server.features}/health").status_code == 200


def test_serve_answers_only_its_names_and_keeps_the_key_out_of_a_debug_log(tmp_path):
    # `neuroscope serve` as a user runs it: the flag reaches the server, and its real log handler at debug level
    # never shows the key, even for requests aiohttp cannot parse
    from tests.support.process import start_serve

    srv = start_serve(tmp_path, "--demo", "--backend", "torch-cpu", "--allowed-hosts", "neuroscope.lan",
                      "--api-key", KEY, "--log-level", "debug", env={"NEUROSCOPE_CACHE": str(tmp_path / "cache")})
    try:
        auth = {"Authorization": f"Bearer {KEY}"}
        ok = httpx.get(f"{srv.features}/v1/features/info", headers={**auth, "Host": "neuroscope.lan"}, timeout=30)
        assert ok.status_code == 200 and ok.json()["chat_url"].startswith("http://neuroscope.lan:")
        refused = httpx.get(f"{srv.chat}/v1/models", headers={**auth, "Host": "evil.example"}, timeout=30)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "host_not_allowed"
        for base in (srv.chat, srv.features):
            port = int(base.rsplit(":", 1)[1])
            for request_bytes in BAD_REQUESTS:
                head, body = raw(port, request_bytes)
                assert head.split(b" ", 2)[1] == b"400" and not leaked(body.decode()), body
        assert httpx.get(f"{srv.chat}/health", timeout=30).status_code == 200
    finally:
        assert srv.stop() == 0
    assert "bad request from" in srv.output  # debug logging was on
    assert not leaked(srv.output), srv.output
