"""Continuous batching through a real server: concurrent OpenAI clients decode in one batch, and each gets the very
reply and feature events it gets alone; /health and /metrics report the batch; --max-context is a 400."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from neuroscope.core import registry
from tests.support import server as support_server
from tests.support.server import RunningServer, SSEReader, stream_chat

BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(name not in registry.available(),
                                                       reason=f"{name} is not available"))
            for name in ("torch-cpu", "mlx")]

REQUESTS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 24, "temperature": 0},
    {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 18, "temperature": 0.9, "seed": 5},
    {"messages": [{"role": "user", "content": "Tell me a story about a mill by a river, please."}], "max_tokens": 20,
     "seed": 9, "steering": {"features": [{"index": 3, "mode": "add", "value": 30.0}]},
     "logprobs": True, "top_logprobs": 2},  # and a stop string taken from its own output (_with_stop)
    {"messages": [{"role": "user", "content": "Count: one two three"}], "max_tokens": 22, "temperature": 0,
     "frequency_penalty": 0.5},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
     "max_tokens": 16, "top_p": 0.8, "seed": 11},
    {"messages": [{"role": "user", "content": "Write one line about the sea and the wind over it."}], "max_tokens": 26,
     "temperature": 0.7, "seed": 3, "presence_penalty": 0.4},
    {"messages": [{"role": "user", "content": "Go"}], "max_tokens": 12, "temperature": 0,
     "steering": {"features": [{"index": 5, "mode": "ablate"}]}},
    {"messages": [{"role": "user", "content": "Say something about mills."}], "max_tokens": 20, "seed": 21,
     "logit_bias": {"7": 2.0}},
]


class HeldBackend:
    """The real backend; the first prefill waits at ``gate`` (so the other requests queue and then join the running
    one), and every batch step's size is recorded."""

    def __init__(self, backend, gate: threading.Event):
        self._backend, self.gate, self.sizes = backend, gate, []
        self.entered = threading.Event()

    def prefill_steps(self, *args, **kwargs):
        self.entered.set()
        self.gate.wait(60)
        return (yield from self._backend.prefill_steps(*args, **kwargs))

    def batch_step(self):
        self.sizes.append(len(self._backend.batch.rows))
        return self._backend.batch_step()

    def __getattr__(self, name):
        return getattr(self._backend, name)


def _stream(srv, body) -> tuple[str, str, str]:
    """One streaming chat request: (its id, its text, its finish_reason)."""
    s = stream_chat(srv, body, timeout=60)
    return s.id, s.text, s.finish_reason

def _with_stop(srv, requests: list[dict], i: int) -> tuple[list[dict], str, str]:
    """``requests`` with a stop string for request ``i`` that its own output contains past its start (two
    characters from the second half of what it writes without one): (the requests, the stop, its full text)."""
    _, full, _ = _stream(srv, requests[i])
    at = next(j for j in range(len(full) // 2, len(full) - 1) if not full[j: j + 2].isspace())
    stop = full[at: at + 2]
    assert full.index(stop) > 0, (full, stop)
    return [{**body, "stop": [stop]} if j == i else body for j, body in enumerate(requests)], stop, full


def _events(reader, rid) -> list[dict]:
    out = []
    for e in reader.of(rid):
        e = dict(e)
        e.pop("request_id")
        out.append(e)
    return out


def _assert_same_events(got: list[dict], want: list[dict]) -> None:
    """Equal events, activations to 1e-4 relative."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k != "top_features"} == {k: v for k, v in w.items() if k != "top_features"}
        assert [f["index"] for f in g["top_features"]] == [f["index"] for f in w["top_features"]], g["token_index"]
        assert [f["activation"] for f in g["top_features"]] == pytest.approx(
            [f["activation"] for f in w["top_features"]], rel=1e-4, abs=1e-5)


def _wait(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_clients_get_what_they_get_alone(tiny_fixture, backend):
    alone = RunningServer(backend, tiny_fixture)  # --max-batch 1: one request at a time
    try:
        assert httpx.get(f"{alone.chat}/health").json()["max_batch"] == 1
        requests, stop, full = _with_stop(alone, REQUESTS, 2)
        reader = SSEReader(f"{alone.features}/v1/features/stream", until_complete=len(requests)).start()
        solo = [_stream(alone, body) for body in requests]
        reader.wait()
        solo_events = [_events(reader, rid) for rid, _, _ in solo]
    finally:
        alone.stop()
    # the stop string's client stopped on it alone: its text ends where the stop string begins
    assert solo[2][2] == "stop" and solo[2][1] == full[: full.index(stop)], (solo[2], stop, full)

    gate = threading.Event()
    srv = RunningServer(backend, tiny_fixture, max_batch=8)
    assert srv.server.engine.kv_bytes > 0
    held = HeldBackend(srv.backend, gate)
    srv.server.engine.backend = held
    srv.server.engine.scheduler.backend = held
    pool = ThreadPoolExecutor(len(REQUESTS))
    try:
        reader = SSEReader(f"{srv.features}/v1/features/stream", until_complete=len(requests)).start()
        first = pool.submit(_stream, srv, requests[0])
        _wait(held.entered.is_set)
        rest = [pool.submit(_stream, srv, body) for body in requests[1:]]
        _wait(lambda: httpx.get(f"{srv.chat}/health").json()["queued"] == len(requests) - 1)
        health = httpx.get(f"{srv.chat}/health").json()
        assert health["running"] == 1 and health["max_batch"] == 8
        gate.set()
        batched = [first.result(60), *[f.result(60) for f in rest]]
        reader.wait()
        assert max(held.sizes) >= 6, f"the requests should have decoded together: {held.sizes}"
        assert batched[2][1:] == solo[2][1:], "the stop string's client stops where it stops alone"
        for (rid, text, finish), (_, solo_text, solo_finish), want in zip(batched, solo, solo_events):
            assert (text, finish) == (solo_text, solo_finish)
            got = _events(reader, rid)
            assert [e["token_index"] for e in got] == list(range(len(got)))
            _assert_same_events(got, want)
        health = httpx.get(f"{srv.chat}/health").json()
        assert health["running"] == 0 and health["queued"] == 0 and health["last_batch"] >= 1
        metrics = httpx.get(f"{srv.chat}/metrics").text
        assert "neuroscope_running_requests 0.0" in metrics
        assert "neuroscope_last_batch_size" in metrics
    finally:
        gate.set()
        pool.shutdown()
        srv.stop()


@pytest.mark.parametrize("max_batch", [1, 4])
def test_a_request_longer_than_max_context_is_a_400_before_it_queues(tiny_fixture, max_batch):
    srv = RunningServer("torch-cpu", tiny_fixture, max_batch=max_batch, max_context=64)
    try:
        assert httpx.get(f"{srv.chat}/health").json()["max_context"] == 64
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 60}
        r = httpx.post(f"{srv.chat}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        msg = r.json()["error"]["message"]
        assert "maximum context length is 64 tokens" in msg and "--max-context" in msg  # the server's limit, said
        r = httpx.post(f"{srv.chat}/v1/chat/completions", json={**body, "max_tokens": 8}, timeout=30)
        assert r.status_code == 200
        assert httpx.get(f"{srv.chat}/health").json()["completed"] == 1
    finally:
        srv.stop()


def test_the_start_up_panel_states_the_batch_settings(tiny_fixture):
    from neuroscope.config import ServeConfig
    from neuroscope.server.serve import batch_row

    srv = RunningServer("torch-cpu", tiny_fixture, max_batch=4, max_context=128)
    try:
        engine = srv.server.engine
        assert engine.kv_bytes > 0
        row = batch_row(engine, ServeConfig(max_batch=4, prefill_chunk=64, max_context=128))
        assert "up to 4 requests per step, 128 tokens each" in row and "chunks of 64" in row and "GiB" in row
    finally:
        srv.stop()
    srv = RunningServer("torch-cpu", tiny_fixture)
    try:
        assert batch_row(srv.server.engine, ServeConfig(max_batch=1)).startswith("one request at a time (--max-batch 1)")
    finally:
        srv.stop()


class OneAtATime:
    """A backend with the single-request pieces only (no batching methods), as a backend that does not batch."""

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        if name in ("open_batch", "prefill_steps", "join", "leave", "batch_step", "batch_to_host", "reset_batch"):
            raise AttributeError(name)
        return getattr(self._backend, name)


def test_a_backend_that_does_not_batch_serves_one_request_at_a_time(tiny_fixture, monkeypatch):
    from neuroscope.config import ServeConfig
    from neuroscope.server.serve import batch_row

    def load(*args, **kwargs):
        backend, info, sae = load_backend(*args, **kwargs)
        return OneAtATime(backend), info, sae

    load_backend = support_server.load_backend
    monkeypatch.setattr(support_server, "load_backend", load)
    srv = RunningServer("torch-cpu", tiny_fixture, max_batch=4)
    try:
        health = httpx.get(f"{srv.chat}/health").json()
        assert health["max_batch"] == 1 and health["last_batch"] == 0
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
        assert httpx.post(f"{srv.chat}/v1/chat/completions", json=body, timeout=60).status_code == 200
        assert httpx.get(f"{srv.chat}/health").json()["last_batch"] == 1
        assert "decodes one request at a time" in batch_row(srv.server.engine, ServeConfig(max_batch=4))
    finally:
        srv.stop()
