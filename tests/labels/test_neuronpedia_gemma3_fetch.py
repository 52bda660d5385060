"""Neuronpedia's lazy and bulk label code with a Gemma Scope 2 SAE, against the loopback fake: ``serve``'s
labels for ``google/gemma-3-1b-it`` (its default SAE) ask ``gemma-3-1b-it/17-gemmascope-2-res-16k`` as features
appear, and ``labels fetch --model google/gemma-3-1b-it`` fills the same cache from the export and the API."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from neuroscope.cli import serve as cli
from neuroscope.config import ServeConfig, with_sae
from neuroscope.labels.neuronpedia.cache import NeuronpediaCache
from neuroscope.runtime import finish_probe, load_labels
from tests.support.neuronpedia_fake import FakeNeuronpedia, explanation

MODEL_ID, SOURCE_ID, D = "gemma-3-1b-it", "17-gemmascope-2-res-16k", 16384


@pytest.fixture
def fake(cache, monkeypatch):
    for name in ("NEURONPEDIA_REGISTRY", "NEURONPEDIA_API_KEY", "LABELER_MODEL"):
        monkeypatch.delenv(name, raising=False)
    f = FakeNeuronpedia(model_id=MODEL_ID, source_id=SOURCE_ID, retry_after="0")
    monkeypatch.setenv("NEURONPEDIA_URL", f.url)
    monkeypatch.setenv("NEURONPEDIA_DATASETS_URL", f.url)
    yield f
    f.stop()


def test_serve_asks_the_gemma_3_source_lazily(fake):
    fake.features = {5: [explanation("rivers", 0.8)], 9: [explanation("the letter q", 0.4)]}
    fake.faults = {9: ["429"]}
    chain = load_labels(with_sae(ServeConfig(model="google/gemma-3-1b-it", sae_layer=17)), D)
    finish_probe(chain)
    lazy = chain.neuronpedia.lazy
    assert lazy is not None and str(lazy.ids) == f"{MODEL_ID}/{SOURCE_ID}" and lazy.ids.d_sae == D

    async def ask():
        async with lazy:
            for i in (5, 9, 11):
                lazy.want(i)
            for _ in range(200):
                if lazy.written >= 3:
                    break
                await asyncio.sleep(0.05)

    asyncio.run(ask())
    assert sorted(int(s.path.rsplit("/", 1)[1]) for s in fake.feature_requests()) == [5, 9, 9, 11]
    assert all(f"/api/feature/{MODEL_ID}/{SOURCE_ID}/" in s.path for s in fake.feature_requests())
    assert (chain[5], chain[9], chain[11]) == ("rivers", "the letter q", "feature_11")
    answers = NeuronpediaCache(MODEL_ID, SOURCE_ID, D).load()
    assert answers[5].label == "rivers" and answers[11].label is None


def test_labels_fetch_for_a_gemma_3_model(fake):
    fake.batches = [[explanation(f"export {i}", index=i) for i in range(D) if i not in (1, 3)]]
    fake.features = {1: [explanation("api one", 0.6)]}
    result = CliRunner().invoke(cli.app, ["labels", "fetch", "--model", "google/gemma-3-1b-it"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert f"Neuronpedia {MODEL_ID}/{SOURCE_ID}:" in out and "1 batches merged" in out
    requested = [s.path for s in fake.seen]
    assert any(p.endswith(f"/v1/{MODEL_ID}/{SOURCE_ID}/explanations/batch-0.jsonl.gz") for p in requested)
    cache = NeuronpediaCache(MODEL_ID, SOURCE_ID, D).load()
    assert cache[0].label == "export 0" and cache[1].label == "api one" and len(cache) == D
    assert cache[3].label is None and sorted(int(s.path.rsplit("/", 1)[1]) for s in fake.feature_requests()) == [1, 3]
