"""DNS rebinding: on a loopback bind both ports answer only to loopback names, the bind address and
``--allowed-hosts``; a page on a foreign name that re-resolves to 127.0.0.1 gets 403 before any work."""

from __future__ import annotations

import socket

import httpx
import pytest

from neuroscope.config import ServeConfig
from neuroscope.server.access import Access
from neuroscope.server.origins import HostPolicy, parse_allowed_hosts
from tests.support.server import RunningServer

CHAT_BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
CHAT_PATHS = ("/v1/models", "/metrics", "/health", "/v1/models/anything")
FEATURE_PATHS = ("/", "/main.js", "/favicon.ico", "/v1/features/stream?include_prompt=true", "/v1/features/labels",
                 "/v1/features/info", "/health")


@pytest.fixture(scope="module")
def loopback(tiny_fixture):
    srv = RunningServer("torch-cpu", tiny_fixture)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def proxied(tiny_fixture):
    """Loopback bind, ``--allowed-hosts neuroscope.lan,evil.example`` (names a reverse proxy forwards)."""
    srv = RunningServer("torch-cpu", tiny_fixture, access=Access(allowed_hosts=("neuroscope.lan", "evil.example")))
    yield srv
    srv.stop()


def work_done(srv: RunningServer) -> tuple[int, int]:
    return (httpx.get(f"{srv.chat}/health").json()["completed"],
            httpx.get(f"{srv.features}/health").json()["published"])


def assert_host_refused(r: httpx.Response) -> None:
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "host_not_allowed" and "--allowed-hosts" in err["message"]


@pytest.mark.parametrize("name", ["evil.example", "localhost.evil.example", "127.0.0.1.nip.io", "a%zz"])
def test_a_foreign_host_name_is_refused_on_every_route_of_both_ports(loopback, name):
    srv = loopback
    before = work_done(srv)
    for base, port, paths in ((srv.chat, srv.bound.chat_port, CHAT_PATHS),
                              (srv.features, srv.bound.features_port, FEATURE_PATHS)):
        for path in paths:  # the viewer's files included: a rebound page must not even load them
            assert_host_refused(httpx.get(base + path, headers={"Host": f"{name}:{port}"}))
    # a foreign name that sends its body gets the same answer: no generation, no feature events
    r = httpx.post(f"{srv.chat}/v1/chat/completions", json=CHAT_BODY, headers={"Host": name})
    assert_host_refused(r)
    assert srv.subscribers() == 0 and work_done(srv) == before


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST"])
def test_loopback_names_on_any_port_are_answered(loopback, host):
    for base in (loopback.chat, loopback.features):
        for port in ("", ":1", f":{base.rsplit(':', 1)[1]}"):
            assert httpx.get(f"{base}/health", headers={"Host": host + port}).status_code == 200, (host, port)
    info = httpx.get(f"{loopback.features}/v1/features/info", headers={"Host": f"{host}:1"}).json()
    assert info["chat_url"] == f"http://{host.lower()}:{loopback.bound.chat_port}/v1"


def test_a_request_without_a_host_is_answered(loopback):
    # no browser sends one; an HTTP/1.0 script may
    with socket.create_connection(("127.0.0.1", loopback.bound.features_port)) as s:
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.0 200 ")


def test_allowed_hosts_add_names(proxied):
    srv = proxied
    r = httpx.get(f"{srv.features}/v1/features/info", headers={"Host": "neuroscope.lan"})
    assert r.status_code == 200 and r.json()["chat_url"] == f"http://neuroscope.lan:{srv.bound.chat_port}/v1"
    r = httpx.post(f"{srv.chat}/v1/chat/completions", json=CHAT_BODY, headers={"Host": "NeuroScope.lan:443"})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert httpx.get(f"{srv.chat}/health").status_code == 200  # loopback stays
    assert_host_refused(httpx.get(f"{srv.chat}/health", headers={"Host": "other.lan"}))


@pytest.mark.parametrize("port", ["chat", "features"])
def test_on_a_loopback_bind_a_foreign_origin_on_the_viewer_port_is_refused(proxied, port):
    # the Host check lets evil.example through (it is allowed here, as behind a proxy), so the CORS guard alone
    # must refuse the page http://evil.example:<features port>: on a loopback bind only a public bind's own
    # viewer origin is trusted
    srv = proxied
    base, bound = (srv.chat, srv.bound.chat_port) if port == "chat" else (srv.features, srv.bound.features_port)
    origin = f"http://evil.example:{srv.bound.features_port}"
    r = httpx.options(f"{base}/v1/chat/completions", headers={
        "Host": f"evil.example:{bound}", "Origin": origin, "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in r.headers


def test_a_public_bind_answers_any_name_unless_allowed_hosts_is_given(tiny_fixture):
    # bound (as far as the policy knows) to 0.0.0.0: today's behaviour, any name
    srv = RunningServer("torch-cpu", tiny_fixture, access=Access(bind_host="0.0.0.0"))
    try:
        assert httpx.get(f"{srv.features}/health", headers={"Host": "192.0.2.7"}).status_code == 200
        assert httpx.get(f"{srv.features}/v1/features/labels", headers={"Host": "whatever.example"}).status_code == 200
    finally:
        srv.stop()
    policy = HostPolicy.for_bind("0.0.0.0", ("neuroscope.example.com",))
    assert policy.allows("neuroscope.example.com:8081") and policy.allows("localhost:8081")
    assert not policy.allows("192.0.2.7:8081") and not policy.allows("evil.example")
    assert HostPolicy.for_bind("127.0.0.1", ("*",)).allows("anything.example")
    assert HostPolicy.for_bind("192.0.2.7").allows("anything.example")
    assert HostPolicy.for_bind("192.0.2.7", ("a.example",)).allows("192.0.2.7:8080")  # the bind address


@pytest.mark.parametrize("bad", ["host:8080", "http://host", "a%zz", "a b", "[::1"])
def test_bad_allowed_hosts_entries_are_refused_with_a_message(bad):
    with pytest.raises(ValueError, match="--allowed-hosts"):
        parse_allowed_hosts([bad])
    with pytest.raises(ValueError, match="--allowed-hosts"):
        ServeConfig(allowed_hosts=(bad,)).validate()
    assert parse_allowed_hosts(["[::1]", " Example.COM ", "192.0.2.7"]) == (False, frozenset(
        {"::1", "example.com", "192.0.2.7"}))
