"""Browser and network access over plain HTTP: CORS on both ports, 415 for non-JSON chat bodies, the API key."""

from __future__ import annotations

import httpx
import pytest

from neuroscope.server.access import Access
from neuroscope.server.origins import OriginPolicy
from tests.support.server import RunningServer, SSEReader

KEY = "s3cret-test-key"
CHAT_BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def default_server(tiny_fixture):
    """Started as `neuroscope serve` starts by default: loopback origins only, no key."""
    srv = RunningServer("torch-cpu", tiny_fixture)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keyed_server(tiny_fixture):
    """--allowed-origins https://app.example.com,http://dev.example:* --api-key KEY"""
    access = Access(OriginPolicy.from_list(("https://app.example.com", "http://dev.example:*")), KEY)
    srv = RunningServer("torch-cpu", tiny_fixture, access=access)
    yield srv
    srv.stop()


def work_done(srv: RunningServer) -> tuple[int, int]:
    """(generations completed, feature events published): both stay put when a request is refused."""
    chat = httpx.get(f"{srv.chat}/health").json()
    return chat["completed"], httpx.get(f"{srv.features}/health").json()["published"]


def preflight(url: str, origin: str, method: str = "POST", headers: str = "content-type, authorization"):
    return httpx.options(url, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                       "Access-Control-Request-Headers": headers})


def assert_openai_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["message"]
    return err


# ---------------------------------------------------------------------------------------------- CORS
@pytest.mark.parametrize("origin", ["http://localhost:5173", "http://127.0.0.1:8081", "http://[::1]:3000",
                                    "http://localhost"])
@pytest.mark.parametrize("port", ["chat", "features"])
def test_preflight_from_a_loopback_origin_is_answered(default_server, origin, port):
    base = default_server.chat if port == "chat" else default_server.features
    path = "/v1/chat/completions" if port == "chat" else "/v1/features/stream"
    r = preflight(base + path, origin)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == origin
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == "content-type, authorization"


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost.evil.example:8080", "null",
                                    "https://localhost:5173", "http://127.0.0.2.nip.io"])
@pytest.mark.parametrize("port", ["chat", "features"])
def test_preflight_from_another_origin_is_refused(default_server, origin, port):
    base = default_server.chat if port == "chat" else default_server.features
    r = preflight(base + "/v1/chat/completions", origin)
    err = assert_openai_error(r, 403, "origin_not_allowed")
    assert origin in err["message"] and "--allowed-origins" in err["message"]
    assert "access-control-allow-origin" not in r.headers


def test_a_request_from_a_refused_origin_does_no_work(default_server):
    srv = default_server
    before = work_done(srv)
    r = httpx.post(f"{srv.chat}/v1/chat/completions", json=CHAT_BODY, headers={"Origin": "https://evil.example"})
    assert_openai_error(r, 403, "origin_not_allowed")
    # refused before the body is even read: a malformed one gets the same answer, not a 400
    r = httpx.post(f"{srv.chat}/v1/chat/completions", content=b"{oops", headers={
        "Origin": "https://evil.example", "Content-Type": "application/json"})
    assert r.status_code == 403
    r = httpx.get(f"{srv.features}/v1/features/stream", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and srv.subscribers() == 0
    assert work_done(srv) == before


def test_a_request_from_a_loopback_origin_gets_cors_headers(default_server):
    srv = default_server
    origin = "http://localhost:8081"
    r = httpx.post(f"{srv.chat}/v1/chat/completions", json=CHAT_BODY, headers={"Origin": origin})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == origin and "Origin" in r.headers["vary"]
    assert "X-Request-Id" in r.headers["access-control-expose-headers"]  # a page can read the request id
    rid = r.json()["id"]
    # the feature stream is a streamed response: its headers go out before the handler returns
    with httpx.stream("GET", f"{srv.features}/v1/features/stream?request_id={rid}", headers={"Origin": origin}) as s:
        assert s.status_code == 200 and s.headers["access-control-allow-origin"] == origin
        assert any(line.startswith("event: generation_complete") for line in s.iter_lines())
    # errors too, so a page can show them
    bad = httpx.post(f"{srv.chat}/v1/chat/completions", json={"messages": []}, headers={"Origin": origin})
    assert bad.status_code == 400 and bad.headers["access-control-allow-origin"] == origin


def test_no_wildcard_origin_header_by_default(default_server):
    r = httpx.get(f"{default_server.features}/v1/features/labels")
    assert "access-control-allow-origin" not in r.headers  # no Origin sent, none echoed; never "*"


def test_allowed_origins_widen_and_keep_loopback(keyed_server):
    url = f"{keyed_server.chat}/v1/chat/completions"
    for origin in ("https://app.example.com", "http://dev.example:8000", "http://dev.example", "http://localhost:3000"):
        r = preflight(url, origin)  # no key needed for a preflight: browsers never send one
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == origin, origin
    for origin in ("http://app.example.com", "https://app.example.com:8443", "https://dev.example:8000"):
        assert preflight(url, origin).status_code == 403, origin


def test_allowed_origins_star_allows_any(tiny_fixture):
    srv = RunningServer("torch-cpu", tiny_fixture, access=Access(OriginPolicy.from_list(("*",))))
    try:
        r = preflight(f"{srv.chat}/v1/chat/completions", "https://anything.example")
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "https://anything.example"
    finally:
        srv.stop()


def test_on_a_public_bind_the_viewer_origin_may_call_the_chat_port(tiny_fixture):
    # bound (as far as the policy knows) to 0.0.0.0 and reached as 192.0.2.7: the page served by the features
    # port at that address may chat; the same host on another port may not
    srv = RunningServer("torch-cpu", tiny_fixture, access=Access(bind_host="0.0.0.0"))
    try:
        url = f"{srv.chat}/v1/chat/completions"
        host = {"Host": f"192.0.2.7:{srv.bound.chat_port}"}
        viewer = f"http://192.0.2.7:{srv.bound.features_port}"
        r = httpx.options(url, headers={**host, "Origin": viewer, "Access-Control-Request-Method": "POST"})
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == viewer
        other = "http://192.0.2.7:9"
        r = httpx.options(url, headers={**host, "Origin": other, "Access-Control-Request-Method": "POST"})
        assert r.status_code == 403
        info = httpx.get(f"{srv.features}/v1/features/info", headers={"Host": f"192.0.2.7:{srv.bound.features_port}"})
        assert info.json()["chat_url"] == f"http://192.0.2.7:{srv.bound.chat_port}/v1"
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------- 415
@pytest.mark.parametrize("headers", [{"Content-Type": "text/plain"},
                                     {"Content-Type": "application/x-www-form-urlencoded"},
                                     {"Content-Type": "multipart/form-data; boundary=x"}, {}],
                         ids=["text-plain", "form", "multipart", "none"])
def test_chat_needs_a_json_content_type(default_server, headers):
    import json

    srv = default_server
    before = work_done(srv)
    r = httpx.post(f"{srv.chat}/v1/chat/completions", content=json.dumps(CHAT_BODY).encode(), headers=headers)
    err = assert_openai_error(r, 415, "unsupported_media_type")
    assert "application/json" in err["message"]
    assert work_done(srv) == before


def test_json_with_a_charset_is_fine(default_server):
    import json

    r = httpx.post(f"{default_server.chat}/v1/chat/completions", content=json.dumps(CHAT_BODY).encode(),
                   headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


# ---------------------------------------------------------------------------------------------- API key
def test_chat_port_needs_the_key(keyed_server):
    srv = keyed_server
    url = f"{srv.chat}/v1/chat/completions"
    before = work_done(srv)
    missing = httpx.post(url, json=CHAT_BODY)
    err = assert_openai_error(missing, 401, "invalid_api_key")
    assert "Authorization: Bearer" in err["message"] and missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(url, json=CHAT_BODY, headers={"Authorization": "Bearer nope"})
    assert "Incorrect API key" in assert_openai_error(wrong, 401, "invalid_api_key")["message"]
    assert KEY not in wrong.text and "nope" not in wrong.text
    assert httpx.post(url, json=CHAT_BODY, headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert httpx.post(f"{url}?api_key={KEY}", json=CHAT_BODY).status_code == 401  # the chat port: header only
    assert httpx.get(f"{srv.chat}/v1/models").status_code == 401
    assert work_done(srv) == before
    ok = httpx.post(url, json=CHAT_BODY, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


def test_a_key_that_is_not_text_is_just_wrong(keyed_server):
    import socket

    for target in (b"/v1/features/labels", b"/v1/features/labels?api_key=%ff%fe"):
        with socket.create_connection(("127.0.0.1", keyed_server.bound.features_port)) as s:
            s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe\xc3\r\n"
                      b"Connection: close\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 401 "), target
    assert httpx.get(f"{keyed_server.features}/health").status_code == 200


def test_openai_client_with_and_without_the_key(keyed_server):
    from openai import AuthenticationError, OpenAI

    good = OpenAI(base_url=f"{keyed_server.chat}/v1", api_key=KEY, max_retries=0, timeout=60)
    r = good.chat.completions.create(model=keyed_server.model_id, messages=CHAT_BODY["messages"], max_tokens=2)
    assert r.usage.completion_tokens == 2
    bad = OpenAI(base_url=f"{keyed_server.chat}/v1", api_key="wrong", max_retries=0, timeout=60)
    with pytest.raises(AuthenticationError):
        bad.models.list()


def test_features_port_takes_the_key_as_header_or_query(keyed_server):
    srv = keyed_server
    for path in ("/v1/features/stream", "/v1/features/labels", "/v1/features/info"):
        assert_openai_error(httpx.get(srv.features + path), 401, "invalid_api_key")
        assert httpx.get(f"{srv.features}{path}?api_key=wrong").status_code == 401
    assert httpx.get(f"{srv.features}/v1/features/labels?api_key={KEY}").json()["count"] == 256
    info = httpx.get(f"{srv.features}/v1/features/info", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert info["api_key_required"] is True
    # an EventSource cannot send headers: the query parameter opens the stream
    reader = SSEReader(f"{srv.features}/v1/features/stream?api_key={KEY}").start()
    srv.wait_subscribers(1)
    r = httpx.post(f"{srv.chat}/v1/chat/completions", json=CHAT_BODY, headers={"Authorization": f"Bearer {KEY}"})
    rid = r.json()["id"]
    events = SSEReader(f"{srv.features}/v1/features/stream?request_id={rid}&api_key={KEY}", until_complete=1)
    assert len(events.start().wait()) == 4  # 3 tokens and the completion
    assert reader.error is None


def test_health_and_the_viewer_page_need_no_key(keyed_server):
    srv = keyed_server
    assert httpx.get(f"{srv.chat}/health").json()["status"] == "ok"
    assert httpx.get(f"{srv.features}/health").json()["status"] == "ok"
    page = httpx.get(f"{srv.features}/")
    assert page.status_code == 200 and "<title>Neuroscope</title>" in page.text  # so it can ask for the key
    assert httpx.get(f"{srv.features}/favicon.svg").status_code == 200
