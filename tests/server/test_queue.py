"""The request queue through a real server: --max-queue and 429, request ids of queued requests, stream headers
sent at once, and shutdown with requests queued or running. A gate holds the generation thread on one request
so that others queue behind it deterministically."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from neuroscope.core.feature_hub import HISTORY_REQUESTS
from tests.support.server import RunningServer, SSEReader

BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}


def _wait(cond, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _queued(srv) -> int:
    return httpx.get(f"{srv.chat}/health").json()["queued"]


def _post(srv, **extra):
    return httpx.post(f"{srv.chat}/v1/chat/completions", json={**BODY, **extra}, timeout=60)


def test_max_queue_answers_429_with_retry_after(tiny_fixture):
    gate = threading.Event()
    srv = RunningServer("torch-cpu", tiny_fixture, gate=gate, max_queue=2)
    pool = ThreadPoolExecutor(4)
    try:
        running = pool.submit(_post, srv)
        _wait(srv.backend.entered.is_set, what="the first request to run")
        waiting = [pool.submit(_post, srv) for _ in range(2)]
        _wait(lambda: _queued(srv) == 2, what="two queued requests")
        r = _post(srv)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "queue_full" and r.json()["error"]["type"] == "rate_limit_error"
        r = httpx.post(f"{srv.chat}/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=10)
        assert r.status_code == 429
        gate.set()
        assert running.result(60).status_code == 200
        assert all(f.result(60).status_code == 200 for f in waiting)
        assert _post(srv).status_code == 200  # room again
    finally:
        gate.set()
        pool.shutdown()
        srv.stop()


def test_queued_requests_stream_headers_at_once_and_keep_their_feature_history(tiny_fixture):
    gate = threading.Event()
    n = HISTORY_REQUESTS + 8  # more queued requests than the hub keeps finished ones
    srv = RunningServer("torch-cpu", tiny_fixture, gate=gate, max_queue=n + 1)
    ids: list[str] = []
    lock = threading.Lock()
    results: dict[str, list[str]] = {}

    def stream():
        with httpx.stream("POST", f"{srv.chat}/v1/chat/completions", json={**BODY, "stream": True}, timeout=60) as r:
            assert r.status_code == 200
            rid = r.headers["x-request-id"]
            with lock:
                ids.append(rid)
            results[rid] = list(r.iter_lines())

    pool = ThreadPoolExecutor(n + 1)
    try:
        futures = [pool.submit(stream) for _ in range(n + 1)]  # one runs (held at the gate), n wait
        # every stream has its headers (and its request id) while nothing has been generated yet
        _wait(lambda: len(ids) == n + 1, what="the headers of every stream")
        assert not gate.is_set() and _queued(srv) == n
        # each queued request's id is known to the feature port, however many are queued
        readers = {rid: SSEReader(f"{srv.features}/v1/features/stream?request_id={rid}").start() for rid in ids}
        gate.set()
        for f in futures:
            f.result(60)
        for rid, reader in readers.items():
            events = reader.wait(60)
            assert [e for e, _ in events].count("generation_complete") == 1, rid
            assert len(reader.of(rid)) == 2
        assert all(lines[-2:] == ["data: [DONE]", ""] or "data: [DONE]" in lines for lines in results.values())
    finally:
        gate.set()
        pool.shutdown()
        srv.stop()


def test_shutdown_answers_queued_and_running_requests(tiny_fixture):
    gate = threading.Event()
    srv = RunningServer("torch-cpu", tiny_fixture, gate=gate, max_tokens=900)
    pool = ThreadPoolExecutor(4)
    stream_lines: list[str] = []

    def stream():
        with httpx.stream("POST", f"{srv.chat}/v1/chat/completions", json={**BODY, "stream": True, "max_tokens": 50},
                          timeout=60) as r:
            stream_lines.extend(r.iter_lines())
        return r.status_code

    try:
        running = pool.submit(_post, srv, max_tokens=900)
        _wait(srv.backend.entered.is_set, what="the first request to run")
        running_id = None
        all_events = SSEReader(f"{srv.features}/v1/features/stream").start()
        queued = pool.submit(_post, srv)
        streamed = pool.submit(stream)
        _wait(lambda: _queued(srv) == 2, what="two queued requests")
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        time.sleep(0.3)
        gate.set()  # the running request's prefill goes on, and it sees it was cancelled
        stopper.join(30)
        for f in (running, queued):
            r = f.result(30)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "server_shutting_down"
        assert streamed.result(30) == 200
        data = [json.loads(line[6:]) for line in stream_lines if line.startswith("data: {")]
        assert data and data[-1]["error"]["code"] == "server_shutting_down"
        assert not any(c.get("choices") and c["choices"][0]["finish_reason"] for c in data)
        all_events.wait(30)
        completes = [d for e, d in all_events.events if e == "generation_complete"]
        assert completes and all(d["finish_reason"] == "cancelled" for d in completes)
        running_id = completes[0]["request_id"]
        assert running_id.startswith("chatcmpl-")
    finally:
        gate.set()
        pool.shutdown()
