"""Lazy Neuronpedia labels through a real running server: features that appear in the stream are asked in the
background (a loopback fake that holds its answers, answers 429 + Retry-After, 500, or not at all), tokens never
wait for them, the answers fill the cache, and later events carry the labels."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from neuroscope.core import registry
from neuroscope.labels.chain import LabelChain, Layer, NeuronpediaInfo
from neuroscope.labels.neuronpedia.cache import NeuronpediaCache
from neuroscope.labels.neuronpedia.client import ClientSettings
from neuroscope.labels.neuronpedia.lazy import LazyNeuronpedia
from neuroscope.labels.neuronpedia.registry import NeuronpediaIds
from tests.support.net import closed_port
from tests.support.neuronpedia_fake import FakeNeuronpedia, explanation
from tests.support.server import RunningServer, SSEReader

BACKEND = "torch-cpu" if "torch-cpu" in registry.available() else (registry.available() or [None])[0]
pytestmark = pytest.mark.skipif(BACKEND is None, reason="no backend")
IDS = NeuronpediaIds("tiny", "2-test", 256)
MSG = [{"role": "user", "content": "Tell me about the river and the old mill."}]


def chain_for(base_url: str) -> LabelChain:
    cache = NeuronpediaCache(IDS.model_id, IDS.source_id, IDS.d_sae)
    chain = LabelChain(IDS.d_sae, [Layer("neuronpedia", str(cache.path))], neuronpedia=NeuronpediaInfo(ids=IDS))
    settings = ClientSettings(base_url=base_url, timeout_s=0.5, backoff_s=0.02, tries=4, concurrency=8,
                              breaker_failures=3, breaker_pause_s=60)
    chain.neuronpedia.lazy = LazyNeuronpedia(IDS, settings, cache, chain.add_neuronpedia)
    return chain


def chat_events(srv: RunningServer) -> list[dict]:
    r = httpx.post(f"{srv.chat}/v1/chat/completions", timeout=60,
                   json={"messages": MSG, "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200, r.text
    reader = SSEReader(f"{srv.features}/v1/features/stream?request_id={r.json()['id']}", until_complete=1)
    return [d for e, d in reader.start().wait(30) if e == "feature_activation"]


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def cache_env(cache):
    return cache


def test_lazy_labels_never_delay_tokens_and_arrive_later(cache_env, tiny_fixture):
    fake = FakeNeuronpedia(model_id=IDS.model_id, source_id=IDS.source_id, retry_after="1")
    for i in range(IDS.d_sae):
        if i % 5:  # every fifth feature has no explanation on Neuronpedia (404)
            fake.features[i] = [explanation(f"unscored {i}"), explanation(f"np label {i}", 0.75)]
        fake.faults[i] = {0: ["429"], 1: ["500"], 2: ["hang"]}.get(i % 6, [])
    chain = chain_for(fake.url)
    srv = RunningServer(BACKEND, tiny_fixture, top_k=4, labels=chain)
    try:
        fake.hold()  # Neuronpedia answers nothing until released: the whole reply must stream regardless
        events = chat_events(srv)
        assert len(events) == 16
        seen = {f["index"] for e in events for f in e["top_features"]}
        assert all(f["label"] == f"feature_{f['index']}" for e in events for f in e["top_features"])
        wait_for(lambda: len(fake.feature_requests()) >= min(8, len(seen)), 10, "the background requests")
        assert chain.counts()["neuronpedia"] == 0  # all of them still held

        fake.release()
        cache = NeuronpediaCache(IDS.model_id, IDS.source_id, IDS.d_sae)
        wait_for(lambda: set(cache.load()) == seen, 30, "every seen feature in the cache")
        answers = cache.load()
        for i in seen:
            assert answers[i].label == (f"np label {i}" if i % 5 else None)
            assert answers[i].score == (0.75 if i % 5 else None)
        asked = len(fake.feature_requests())

        again = chat_events(srv)  # greedy: the same tokens, the same features, now labelled
        for f in (f for e in again for f in e["top_features"]):
            assert f["label"] == (f"np label {f['index']}" if f["index"] % 5 else f"feature_{f['index']}")
        assert len(fake.feature_requests()) == asked, "a feature once answered is not asked again"

        detail = httpx.get(f"{srv.features}/v1/features/labels?detail=true", timeout=10).json()
        labelled = sorted(i for i in seen if i % 5)
        assert detail[str(labelled[0])] == {"label": f"np label {labelled[0]}", "source": "neuronpedia",
                                            "score": 0.75}
        plain = httpx.get(f"{srv.features}/v1/features/labels", timeout=10).json()
        assert plain["labels"][str(labelled[0])] == f"np label {labelled[0]}" and plain["named"] == len(labelled)
        info = httpx.get(f"{srv.features}/v1/features/info", timeout=10).json()["labels"]
        assert info["sources"]["neuronpedia"] == len(labelled) and info["sources"]["numeric"] == 256 - len(labelled)
        np_info = info["neuronpedia"]
        assert (np_info["model_id"], np_info["source_id"], np_info["state"]) == ("tiny", "2-test", "ok")
        assert np_info["written"] == len(seen)
    finally:
        srv.stop()
        fake.stop()
    # every answer line is whole
    lines = cache.path.read_text().splitlines()
    assert len(lines) == len(seen)


def test_unreachable_neuronpedia_one_warning_and_the_stream_goes_on(cache_env, tiny_fixture, caplog):
    caplog.set_level(logging.WARNING, logger="neuroscope.neuronpedia")
    chain = chain_for(f"http://127.0.0.1:{closed_port()}")
    srv = RunningServer(BACKEND, tiny_fixture, top_k=4, labels=chain)
    try:
        for _ in range(2):
            events = chat_events(srv)
            assert len(events) == 16
            assert all(f["label"].startswith("feature_") for e in events for f in e["top_features"])
        info = httpx.get(f"{srv.features}/v1/features/info", timeout=10).json()["labels"]["neuronpedia"]
        wait_for(lambda: httpx.get(f"{srv.features}/v1/features/info", timeout=10).json()["labels"]["neuronpedia"]
                 ["state"] == "unreachable", 10, "the breaker")
        info = httpx.get(f"{srv.features}/v1/features/info", timeout=10).json()["labels"]["neuronpedia"]
        assert "ConnectorError" in info["last_error"]
    finally:
        srv.stop()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "neuroscope.neuronpedia"]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
