"""Bad, hostile and heavy input on the chat port: each a clean OpenAI-shaped 4xx (or the stated behaviour),
never a 500 or a hang, and the server alive after. Raw sockets where an HTTP client would not send the bytes."""

from __future__ import annotations

import gzip
import json
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.server import RunningServer

BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def srv(tiny_fixture):
    s = RunningServer("torch-cpu", tiny_fixture, idle_timeout=1.5, body_timeout=1.5)
    yield s
    s.stop()


def raw(port: int, data: bytes, *, timeout: float = 10.0, shut: bool = False) -> tuple[int, dict, bytes]:
    """Send ``data``; return (status, headers, body) of the response (read until the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = s.recv(65536)
            except socket.timeout:
                break
            if not got:
                break
            buf += got
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                hdrs = _headers(head)
                n = int(hdrs.get("content-length", -1))
                if n >= 0 and len(rest) >= n:
                    break
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head, "no response"
    return int(head.split(b" ")[1]), _headers(head), rest


def _headers(head: bytes) -> dict:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def post(port: int, body: bytes, *headers: str, path: str = "/v1/chat/completions") -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    if not any(h.lower().startswith("content-type") for h in headers):
        extra += "Content-Type: application/json\r\n"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def assert_openai_error(status: int, body: bytes, expect: int) -> dict:
    assert status == expect, body[:300]
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def assert_alive(srv) -> None:
    r = httpx.post(f"{srv.chat}/v1/chat/completions", json=BODY, timeout=30)
    assert r.status_code == 200, r.text


CASES = [
    ("nested-10000", b"[" * 10_000 + b"]" * 10_000, (), 400),
    ("nested-10000-in-object", b'{"messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", (), 400),
    ("lone-surrogate", b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', (), 400),
    ("surrogate-in-key", b'{"messages": [{"role": "user", "content": "a"}], "\\udfff": 1}', (), 400),
    ("int-5000-digits", b'{"messages": [{"role": "user", "content": "a"}], "max_tokens": ' + b"7" * 5000 + b"}",
     (), 400),
    ("int-5000-digits-deep", b'{"metadata": {"x": [' + b"1" * 5000 + b"]}, \"messages\": []}", (), 400),
    ("seed-beyond-2-64", json.dumps({**BODY, "seed": 2**70}).encode(), (), 400),
    ("seed-below-minus-2-63", json.dumps({**BODY, "seed": -(2**63) - 1}).encode(), (), 400),
    ("charset-bogus", json.dumps(BODY).encode(), ("Content-Type: application/json; charset=klingon",), 415),
    ("charset-latin1", json.dumps(BODY).encode(), ("Content-Type: application/json; charset=latin-1",), 415),
    ("gzip-not-gzip", json.dumps(BODY).encode(), ("Content-Encoding: gzip",), 400),
    ("gzip-truncated", gzip.compress(json.dumps(BODY).encode())[:20], ("Content-Encoding: gzip",), 400),
    ("encoding-unknown", json.dumps(BODY).encode(), ("Content-Encoding: br-zzz",), 415),
    ("text-plain", json.dumps(BODY).encode(), ("Content-Type: text/plain",), 415),
    ("form", b"messages=hi", ("Content-Type: application/x-www-form-urlencoded",), 415),
    ("not-utf8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', (), 400),
]


@pytest.mark.parametrize("body,headers,status", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_body_is_a_clean_4xx(srv, body, headers, status):
    code, _, rest = raw(srv.bound.chat_port, post(srv.bound.chat_port, body, *headers))
    assert_openai_error(code, rest, status)


def test_seeds_in_range_work_at_both_ends(srv):
    for seed in (2**64 - 1, -(2**63), 0):
        r = httpx.post(f"{srv.chat}/v1/chat/completions", json={**BODY, "seed": seed, "temperature": 1}, timeout=30)
        assert r.status_code == 200, (seed, r.text)
        assert r.json()["usage"]["completion_tokens"] == 2


def test_gzip_body_is_read(srv):
    code, _, rest = raw(srv.bound.chat_port, post(srv.bound.chat_port, gzip.compress(json.dumps(BODY).encode()),
                                                  "Content-Encoding: gzip"))
    assert code == 200 and json.loads(rest)["usage"]["completion_tokens"] == 2


def test_gzip_bomb_is_refused(srv):
    bomb = gzip.compress(b" " * (64 * 1024 * 1024))  # 64 MB of spaces, ~64 kB compressed
    code, _, rest = raw(srv.bound.chat_port, post(srv.bound.chat_port, bomb, "Content-Encoding: gzip"))
    assert_openai_error(code, rest, 413)
    assert_alive(srv)


def test_chunked_body_is_read_and_bad_chunking_is_a_json_400(srv):
    body = json.dumps(BODY).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:10], body[10:])) + b"0\r\n\r\n"
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n"
    code, _, rest = raw(srv.bound.chat_port, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
    assert code == 200, rest
    code, hdrs, rest = raw(srv.bound.chat_port, head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nnot hex\r\n")
    assert_openai_error(code, rest, 400)
    assert hdrs["content-type"].startswith("application/json")


@pytest.mark.parametrize("method", ["HEAD", "GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_other_methods_on_post_routes_are_405_json(srv, method, path):
    r = httpx.request(method, f"{srv.chat}{path}", timeout=10)
    assert r.status_code == 405 and r.headers["content-type"].startswith("application/json")
    if method != "HEAD":
        assert r.json()["error"]["code"] == "method_not_allowed"


def test_framing_errors_are_json_without_traceback_spam(srv, caplog):
    port = srv.bound.chat_port
    bad = [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad\x00Header: 1\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ]
    with caplog.at_level(logging.INFO):
        for data in bad:
            code, hdrs, rest = raw(port, data)
            assert 400 <= code < 500 and hdrs["content-type"].startswith("application/json"), rest[:200]
            assert set(json.loads(rest)["error"]) == {"message", "type", "param", "code"}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info], caplog.text
    assert_alive(srv)


# ----------------------------------------------------------------------------------------------- slow clients
def _closed_by_the_server(sock: socket.socket) -> bool:
    """Whether the server closes ``sock`` (its idle timeout here is 1.5 s; a minute means it never would)."""
    sock.settimeout(60)
    try:
        while sock.recv(65536):
            pass
    except socket.timeout:
        return False
    except ConnectionResetError:
        pass
    return True


def test_incomplete_headers_are_closed(srv):
    with socket.create_connection(("127.0.0.1", srv.bound.chat_port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
        assert _closed_by_the_server(s)
    assert_alive(srv)


def test_trickled_headers_are_closed(srv):
    # a header line every 0.3 s keeps the connection busy but never completes the head: the server closes it
    # (the head deadline counts from the connection's start, not from the last byte)
    with socket.create_connection(("127.0.0.1", srv.bound.chat_port)) as s:
        s.settimeout(0.3)
        closed_after = None
        for i in range(200):
            try:
                s.sendall(b"X-%d: y\r\n" % i if i else b"GET /health HTTP/1.1\r\n")
                if s.recv(1) == b"":
                    closed_after = i
                    break
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed_after = i
                break
        assert closed_after is not None, "the server kept reading a head that never ends"
    assert_alive(srv)


def test_incomplete_body_is_closed(srv):
    with socket.create_connection(("127.0.0.1", srv.bound.chat_port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"messages\":")
        s.settimeout(10)
        data = b""
        while True:
            got = s.recv(65536)
            if not got:
                break
            data += got
    assert data.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in data
    assert_alive(srv)


def test_idle_keep_alive_is_closed(srv):
    with socket.create_connection(("127.0.0.1", srv.bound.chat_port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        assert _closed_by_the_server(s)


def test_default_timeouts_are_within_the_limits():
    import inspect

    from neuroscope.server.app import NeuroscopeServer

    p = inspect.signature(NeuroscopeServer).parameters
    from neuroscope.server.app import LINGER

    assert p["idle_timeout"].default <= 30 and p["body_timeout"].default + LINGER <= 30


# ----------------------------------------------------------------------------------------------- big bodies
def _rss() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))


class _HeldExecutor:
    """Runs what the server hands its worker thread only once ``release`` is set, and records what it was."""

    def __init__(self, inner):
        self.inner, self.release, self.held, self.names = inner, threading.Event(), threading.Event(), []

    def submit(self, fn, *args):
        self.names.append(fn.__name__)

        def run():
            self.held.set()
            self.release.wait(120)
            return fn(*args)

        return self.inner.submit(run)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_big_bodies_do_not_freeze_the_loop_or_keep_memory(srv, path):
    text = "the river bends around the old mill " * (7_900_000 // 36)  # just under the 8 MB limit
    key = "prompt" if path == "/v1/completions" else "messages"
    body = json.dumps({key: text if key == "prompt" else [{"role": "user", "content": text}]}).encode()
    state = srv.server.state
    inner = state.executor
    before = _rss()
    try:
        for _ in range(4):
            held = state.executor = _HeldExecutor(inner)
            with ThreadPoolExecutor(1) as pool:
                answer = pool.submit(httpx.post, f"{srv.chat}{path}", content=body,
                                     headers={"content-type": "application/json"}, timeout=120)
                assert held.held.wait(60), "the body was never handed to the worker thread"
                # its decoding is held on the worker: the event loop still answers both ports meanwhile
                assert httpx.get(f"{srv.features}/health", timeout=30).status_code == 200
                assert httpx.get(f"{srv.chat}/health", timeout=30).status_code == 200
                held.release.set()
                r = answer.result(120)
            assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text[:300]
            # decompressing, decoding, parsing and the prompt's planning all ran on the worker
            assert held.names[:2] == ["decode_json", "plan_chat" if key == "messages" else "plan_completion"]
    finally:
        state.executor = inner
    assert _rss() - before < 256 * 1024 * 1024
    assert_alive(srv)
