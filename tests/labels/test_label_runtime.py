"""What ``serve`` builds for labels before it listens: the chain of the served SAE, the lazy Neuronpedia fetcher
when the registry knows it, and the offline check that turns the fetcher off (the panel says why)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from neuroscope.config import DEFAULT_SAE, DEFAULT_SAE_PATH, ServeConfig, with_sae
from neuroscope.runtime import finish_probe, load_labels
from neuroscope.server.serve import _label_rows
from tests.support.net import closed_port
from tests.support.neuronpedia_fake import FakeNeuronpedia


@pytest.fixture(autouse=True)
def cache(cache, monkeypatch):
    monkeypatch.delenv("LABELER_MODEL", raising=False)
    monkeypatch.delenv("NEURONPEDIA_REGISTRY", raising=False)


def rows(chain, **cfg) -> dict[str, str]:
    rt = SimpleNamespace(labels=chain, config=ServeConfig(**cfg))
    return {name: value for name, value in _label_rows(rt) if name}


def test_reachable_neuronpedia_is_asked_lazily(monkeypatch):
    fake = FakeNeuronpedia()
    try:
        monkeypatch.setenv("NEURONPEDIA_URL", fake.url)
        chain = load_labels(with_sae(ServeConfig()), 16384)
        finish_probe(chain)
        assert chain.neuronpedia.lazy is not None and chain.neuronpedia.lazy.settings.base_url == fake.url
        r = rows(chain)
        assert r["neuronpedia"].startswith("gemma-2-2b/20-gemmascope-res-16k: 0 cached, the rest asked")
        assert r["labeler"].startswith("deepseek/deepseek-v3.2") and "0 numeric" not in r["labels"]
    finally:
        fake.stop()


def test_offline_neuronpedia_serves_the_cache_only(monkeypatch):
    monkeypatch.setenv("NEURONPEDIA_URL", f"http://127.0.0.1:{closed_port()}")
    chain = load_labels(with_sae(ServeConfig(labeler="anthropic/claude-haiku")), 16384)
    finish_probe(chain)
    assert chain.neuronpedia.lazy is None and chain.neuronpedia.skipped.startswith("offline (cannot reach")
    r = rows(chain, labeler="anthropic/claude-haiku", label_threshold=0.7)
    assert "not asked: offline" in r["neuronpedia"]
    assert r["labeler"].startswith("anthropic/claude-haiku") and "below 0.7" in r["labeler"]


def test_turned_off_and_unknown_sae():
    chain = load_labels(with_sae(ServeConfig(neuronpedia=False)), 16384)
    assert chain.neuronpedia.lazy is None and chain.neuronpedia.probe is None
    assert rows(chain)["neuronpedia"] == "skipped: turned off (--no-neuronpedia)"
    other = load_labels(ServeConfig(model="google/gemma-2-9b-it", sae=DEFAULT_SAE, sae_path=DEFAULT_SAE_PATH),
                        16384)
    assert "not in Neuronpedia's registry" in rows(other)["neuronpedia"]
