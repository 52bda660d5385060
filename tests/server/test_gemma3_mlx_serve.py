"""A Gemma-3 checkpoint served by the MLX backend through a real server under ``--max-batch``: concurrent clients
(greedy, steered, with logprobs) get the replies and feature events they get one at a time, and a feature's page
equals numpy on the checkpoint's own files."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from neuroscope.core import registry
from tests.server.test_batching_serve import HeldBackend
from tests.support import explore as ref
from tests.support.server import RunningServer, SSEReader, stream_chat

pytestmark = pytest.mark.skipif("mlx" not in registry.available(), reason="mlx is not available")

REQUESTS = [
    {"messages": [{"role": "user", "content": "Tell me about the river and the old mill by the village."}],
     "max_tokens": 30, "temperature": 0},
    {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 24, "temperature": 0, "logprobs": True,
     "top_logprobs": 2},
    {"messages": [{"role": "user", "content": "Count: one two three"}], "max_tokens": 20, "temperature": 0.8,
     "seed": 4, "steering": {"features": [{"index": 7, "mode": "add", "value": 6.0}]}},
]


def _stream(srv, body) -> tuple[str, str, list]:
    """(request id, text, per-token logprobs) of one streaming chat request."""
    s = stream_chat(srv, body, timeout=60)
    return s.id, s.text, s.logprobs

def _events(reader, rid) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "request_id"} for e in reader.of(rid)]


def test_concurrent_gemma3_clients_get_what_they_get_alone(tiny_gemma3_fixture):
    srv = RunningServer("mlx", tiny_gemma3_fixture, max_batch=4)
    try:
        reader = SSEReader(f"{srv.features}/v1/features/stream", until_complete=2 * len(REQUESTS)).start()
        alone = [_stream(srv, body) for body in REQUESTS]
        gate = threading.Event()  # the first request waits until the others queue, then they join it
        held = HeldBackend(srv.backend, gate)
        srv.server.engine.backend = srv.server.engine.scheduler.backend = held
        with ThreadPoolExecutor(len(REQUESTS)) as pool:
            first = pool.submit(_stream, srv, REQUESTS[0])
            assert held.entered.wait(30)
            rest = [pool.submit(_stream, srv, body) for body in REQUESTS[1:]]
            deadline = time.monotonic() + 30
            while httpx.get(f"{srv.chat}/health").json()["queued"] < len(rest):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            gate.set()
            together = [first.result(60), *[f.result(60) for f in rest]]
        reader.wait()
        assert max(held.sizes) == len(REQUESTS), f"the requests should have decoded together: {held.sizes}"
        page = httpx.get(f"{srv.features}/v1/features/17", timeout=60).json()
    finally:
        srv.stop()
    assert alone[1][2] and len(alone[1][2]) == 24, "logprobs for every token"
    for (rid, text, lps), (solo_rid, solo_text, solo_lps) in zip(together, alone):
        assert text == solo_text and len(text) > 0
        assert [t["token"] for t in lps] == [t["token"] for t in solo_lps]
        got, want = _events(reader, rid), _events(reader, solo_rid)
        assert len(got) == len(want) > 0 and [e["token_index"] for e in got] == list(range(len(got)))
        for g, w in zip(got, want):
            assert [f["index"] for f in g["top_features"]] == [f["index"] for f in w["top_features"]]
            assert [f["activation"] for f in g["top_features"]] == pytest.approx(
                [f["activation"] for f in w["top_features"]], rel=1e-4, abs=1e-5)
    assert any(e["top_features"] for e in _events(reader, together[0][0])), "features fire"
    unembed, scale, W_dec = ref.checkpoint_tensors(tiny_gemma3_fixture)
    ids, cos = ref.neighbours(W_dec, 17)
    assert [n["index"] for n in page["neighbours"]] == ids
    np.testing.assert_allclose([n["cosine"] for n in page["neighbours"]], cos, rtol=1e-4, atol=1e-5)
    pos, pos_v, _, _ = ref.logits(unembed, scale, W_dec, 17)
    assert [t["token_id"] for t in page["logits"]["positive"]] == pos
    np.testing.assert_allclose([t["value"] for t in page["logits"]["positive"]], pos_v, rtol=1e-4, atol=1e-5)
