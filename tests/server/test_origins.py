"""Which browser origins the server lets in, and which bind addresses count as loopback."""

from __future__ import annotations

import pytest

from neuroscope.server.origins import OriginPolicy, host_of, is_loopback_host, parse_allowed_origins, parse_origin


def test_origin_header_parsing():
    assert parse_origin("http://localhost:5173") == ("http", "localhost", 5173)
    assert parse_origin("https://Example.COM") == ("https", "example.com", 443)
    assert parse_origin("http://[::1]:8081") == ("http", "::1", 8081)
    for bad in ("null", "", "file://", "http://", "ftp://a.example", "http://a.example/path", "http://u@a.example",
                "http://a.example:99999", "javascript:alert(1)", "http://a b.example", "http://a\u00e9.example"):
        assert parse_origin(bad) is None, bad


def test_host_header_parsing():
    assert host_of("LocalHost:8081") == "localhost" and host_of("[::1]:80") == "::1"
    assert host_of("a.example") == "a.example"
    for bad in ("", "a b", "x:notaport", "x:1:2", "user@x", "[::1", "x/y"):
        assert host_of(bad) is None, bad


@pytest.mark.parametrize("origin,allowed", [
    ("http://localhost:3000", True), ("http://localhost", True), ("http://127.0.0.1:8081", True),
    ("http://[::1]:9", True), ("https://localhost:3000", False), ("http://127.0.0.2:80", False),
    ("http://localhost.example.com", False), ("http://evil.example", False), ("null", False),
])
def test_default_policy_is_loopback_on_any_port(origin, allowed):
    assert OriginPolicy.from_list().allows(origin) is allowed


def test_listed_origins_add_to_loopback():
    policy = OriginPolicy.from_list(("https://app.example.com", "http://dev.example:*", "http://x.example:8080/"))
    assert policy.allows("https://app.example.com") and policy.allows("https://app.example.com:443")
    assert not policy.allows("https://app.example.com:8443") and not policy.allows("http://app.example.com")
    assert policy.allows("http://dev.example:1234") and policy.allows("http://dev.example")
    assert policy.allows("http://x.example:8080") and not policy.allows("http://x.example:8081")
    assert policy.allows("http://localhost:1")


def test_star_allows_any_origin():
    policy = OriginPolicy.from_list(("*",))
    assert policy.allows("https://anything.example") and policy.allows("null")


@pytest.mark.parametrize("bad", ["example.com", "ftp://example.com", "http://example.com/app", "http://:80",
                                 "http://example.com:99999", "http://example.com:x"])
def test_bad_entries_are_refused_with_a_message(bad):
    with pytest.raises(ValueError, match="is not an origin"):
        parse_allowed_origins((bad,))


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("example.com", False), ("", False),
])
def test_loopback_hosts(host, loopback):
    assert is_loopback_host(host) is loopback
