"""The features port serves the viewer page and tells it what is served and where the chat API is."""

from __future__ import annotations

import httpx
import pytest

import neuroscope


def test_info_says_what_is_served(server):
    info = httpx.get(f"{server.features}/v1/features/info").json()
    assert info["model"] == server.model_id and info["backend"] == server.backend.name
    assert (info["sae"], info["layer"], info["d_sae"], info["top_k"]) == ("tiny", 2, 256, 8)
    assert info["labels"]["source"].endswith("labels.json") and info["labels"]["named"] == 128
    assert info["chat_url"] == f"http://127.0.0.1:{server.bound.chat_port}/v1"
    assert info["stream_url"] == f"{server.features}/v1/features/stream"
    assert info["api_key_required"] is False and info["version"] == neuroscope.__version__
    # the chat address it gives works
    assert httpx.get(f"{info['chat_url']}/models").json()["data"][0]["id"] == server.model_id


@pytest.mark.parametrize("host", ["localhost", "[::1]", "127.0.0.1"])
def test_chat_url_follows_the_address_the_browser_used(server, host):
    info = httpx.get(f"{server.features}/v1/features/info",
                     headers={"Host": f"{host}:{server.bound.features_port}"}).json()
    assert info["chat_url"] == f"http://{host}:{server.bound.chat_port}/v1"


@pytest.fixture(scope="module")
def public_server(tiny_fixture):
    """Bound, as far as the access policy knows, to 0.0.0.0: any Host is answered, malformed ones included."""
    from neuroscope.server.access import Access
    from tests.support.server import RunningServer

    srv = RunningServer("torch-cpu", tiny_fixture, access=Access(bind_host="0.0.0.0"))
    yield srv
    srv.stop()


def _info_with_host(port: int, host: bytes) -> tuple[bytes, bytes]:
    import socket

    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /v1/features/info HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


MALFORMED_HOSTS = [b"x:notaport", b"a b", b"\xff\xfe", b"localhost:1:2", b"user@evil:5", b"", b"a%zz", b"[::1%25eth0]"]


@pytest.mark.parametrize("host", MALFORMED_HOSTS)
def test_a_malformed_host_header_gets_the_listening_address(public_server, host):
    import json

    head, body = _info_with_host(public_server.bound.features_port, host)
    assert head.startswith(b"HTTP/1.1 200 "), head + body
    assert json.loads(body)["chat_url"] == "http://127.0.0.1:%d/v1" % public_server.bound.chat_port


@pytest.mark.parametrize("host", MALFORMED_HOSTS)
def test_a_malformed_host_header_is_refused_on_a_loopback_bind(server, host):
    import json

    head, body = _info_with_host(server.bound.features_port, host)
    assert head.startswith(b"HTTP/1.1 403 ") and b"application/json" in head, head + body
    assert json.loads(body)["error"]["code"] == "host_not_allowed"


def test_the_page_and_its_files(server):
    page = httpx.get(f"{server.features}/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert 'id="feature-panel"' in page.text and 'src="main.js"' in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    for path, kind in (("/main.js", "text/javascript"), ("/viewer.css", "text/css"), ("/favicon.svg", "image/svg+xml"),
                       ("/favicon.ico", "image/svg+xml")):
        r = httpx.get(server.features + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and r.content, path
    assert httpx.get(f"{server.features}/__init__.py").status_code == 404
    assert httpx.get(f"{server.features}/../pyproject.toml").status_code == 404
