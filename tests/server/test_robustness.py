"""Slow or vanished consumers never slow or stop generation; a client that leaves stops its generation."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.support.server import RunningServer, SSEReader

# greedy decoding of this prompt on the tiny fixture runs past 450 tokens without EOS
MSG = [{"role": "user", "content": "The cat sat on the mat."}]


@pytest.fixture(scope="module")
def small_queue_server(tiny_fixture):
    # a tiny per-subscriber queue and many features per event make a stalled subscriber overflow quickly
    srv = RunningServer("torch-cpu", tiny_fixture, top_k=64, queue_size=8, max_tokens=400)
    yield srv
    srv.stop()


def _stalled_subscriber(port: int) -> socket.socket:
    """Connects, asks for the stream, and never reads (a tiny receive buffer fills at once)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /v1/features/stream?include_prompt=true HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return s


def test_stalled_subscriber_does_not_slow_generation(small_queue_server):
    srv = small_queue_server
    stalled = _stalled_subscriber(srv.bound.features_port)
    try:
        srv.wait_subscribers(1)
        # the subscriber itself (it may be cut off later: a stream whose writes stay unacknowledged long enough is
        # aborted, and its figures leave the hub's list with it)
        (slow,) = list(srv.server.hub._subs)
        # ~2,250 events of ~1.4 kB: more than the kernel buffers on both ends of the stalled socket (~1.7 MB)
        ids = []
        for _ in range(5):
            r = httpx.post(f"{srv.chat}/v1/chat/completions",
                           json={"messages": MSG, "max_tokens": 450, "temperature": 0}, timeout=120).json()
            assert r["usage"]["completion_tokens"] == 450 and r["choices"][0]["finish_reason"] == "length"
            ids.append(r["id"])
        # every event was still published, in order: a subscriber of each request (whose replay queue holds a
        # whole request, so a busy machine cannot make it drop) sees every token
        for rid in ids:
            events = SSEReader(f"{srv.features}/v1/features/stream?request_id={rid}", until_complete=1).start().wait(60)
            assert [e["token_index"] for name, e in events if name == "feature_activation"] == list(range(450))
        health = httpx.get(f"{srv.features}/health").json()
        assert slow.include_prompt
        assert slow.dropped > 0, "the stalled subscriber's queue should have overflowed"
        assert slow.pending() <= 8  # bounded: the oldest events went, the newest wait
        assert health["dropped"] >= slow.dropped
    finally:
        stalled.close()


def test_client_disconnect_stops_generation(server):
    done = SSEReader(f"{server.features}/v1/features/stream").start()
    with httpx.stream("POST", f"{server.chat}/v1/chat/completions",
                      json={"messages": MSG, "max_tokens": 900, "stream": True, "temperature": 0}, timeout=60) as r:
        rid = r.headers["x-request-id"]
        lines = r.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("data: ") and '"content"' in line:
                got += 1
            if got >= 4:
                break
    # the connection is closed here, mid-stream
    deadline = time.monotonic() + 30
    while not done.of(rid, "generation_complete") and time.monotonic() < deadline:
        time.sleep(0.05)
    (complete,) = done.of(rid, "generation_complete")
    assert complete["finish_reason"] == "cancelled"
    assert complete["tokens"] < 900
    # and the server carries on
    r2 = httpx.post(f"{server.chat}/v1/chat/completions", json={"messages": MSG, "max_tokens": 2, "temperature": 0}, timeout=60)
    assert r2.status_code == 200 and r2.json()["usage"]["completion_tokens"] == 2


def test_non_stream_client_disconnect_stops_generation(server):
    done = SSEReader(f"{server.features}/v1/features/stream").start()
    body = b'{"messages": [{"role": "user", "content": "The cat sat on the mat."}], "max_tokens": 900, "temperature": 0}'
    s = socket.create_connection(("127.0.0.1", server.bound.chat_port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    deadline = time.monotonic() + 30
    while not any(e == "feature_activation" for e, _ in done.events) and time.monotonic() < deadline:
        time.sleep(0.01)
    s.close()  # gone before the answer
    while not [d for e, d in done.events if e == "generation_complete"] and time.monotonic() < deadline:
        time.sleep(0.05)
    (complete,) = [d for e, d in done.events if e == "generation_complete"]
    assert complete["finish_reason"] == "cancelled" and complete["tokens"] < 900
