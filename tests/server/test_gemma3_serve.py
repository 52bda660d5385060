"""A Gemma-3 checkpoint served by torch-cpu: streamed chat replies under ``--max-batch 2`` (two clients at once)
and their feature events on the feature port — block 3's top-k per token, in order, equal to what the backend
decodes for the same prompt alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from neuroscope.core.decode import generate
from neuroscope.core.protocol import GenerationParams
from tests.support.reference import load_backend
from tests.support.server import RunningServer, SSEReader, stream_chat

pytest.importorskip("torch")

REQUESTS = [
    {"messages": [{"role": "user", "content": "What is the capital of France? Tell me about the river."}],
     "max_tokens": 30, "temperature": 0},
    {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 24, "temperature": 0.9, "seed": 5},
]


def _stream(srv, body) -> tuple[str, str]:
    s = stream_chat(srv, {**body, "model": srv.model_id})
    return s.id, s.text

def test_streamed_chat_and_feature_events_on_gemma3(tiny_gemma3_fixture):
    fx = tiny_gemma3_fixture
    srv = RunningServer("torch-cpu", fx, max_batch=2)
    try:
        reader = SSEReader(f"{srv.features}/v1/features/stream", until_complete=len(REQUESTS)).start()
        with ThreadPoolExecutor(len(REQUESTS)) as pool:
            replies = list(pool.map(lambda body: _stream(srv, body), REQUESTS))
        reader.wait()
    finally:
        srv.stop()

    backend, info, _ = load_backend("torch-cpu", fx, top_k=8)
    try:
        tok = info.tokenizer
        for body, (rid, text) in zip(REQUESTS, replies):
            events = reader.of(rid)
            assert len(events) == body["max_tokens"]
            assert [e["token_index"] for e in events] == list(range(len(events)))
            assert "".join(e["token"] for e in events) == text
            assert all(e["layer"] == fx.sae_layer and e["l0"] > 0 for e in events)
            ids = tok.encode(tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True),
                             add_special_tokens=False)
            params = GenerationParams(max_tokens=body["max_tokens"], temperature=body["temperature"],
                                      seed=body.get("seed"))
            alone = list(generate(backend, ids, params))
            assert tok.decode([s.token_id for s in alone], skip_special_tokens=True) == text
            for e, s in zip(events, alone):
                assert [f["index"] for f in e["top_features"]] == s.feature_ids.tolist()
                assert [f["activation"] for f in e["top_features"]] == pytest.approx(s.feature_values.tolist(),
                                                                                    rel=1e-4, abs=1e-5)
                assert e["l0"] == s.l0
    finally:
        backend.close()
