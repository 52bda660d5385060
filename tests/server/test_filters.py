"""Serve-time filters end to end: a real server on the tiny checkpoint with a calibration file made by
``calibrate run``, its feature events checked against a numpy reference built from the calibration file's
definition and transformers' residuals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from neuroscope.calibration import filters
from neuroscope.calibration import run as calibrate
from neuroscope.calibration import stats as calibration
from neuroscope.config import ServeConfig
from neuroscope.core import registry
from neuroscope.core.sae import load_npz
from tests.support.calib import write_corpus
from tests.support.reference import reference_acts, residuals
from tests.support.server import RunningServer, SSEReader

BACKENDS = registry.available()
K = 8
THRESHOLD = 0.2  # the tiny SAE's densest features fire on ~25-35 % of tokens: this threshold hides some
MSG = [{"role": "user", "content": "Tell me about the river, the old mill and the capital of France."}]


@pytest.fixture(scope="module")
def cal_path(tiny_fixture, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calibration")
    corpus = write_corpus(tmp / "corpus", 40)
    config = ServeConfig(model=str(tiny_fixture.model_dir), sae_local_path=str(tiny_fixture.sae_path),
                         sae_layer=tiny_fixture.sae_layer, backend="torch-cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEUROSCOPE_CACHE", str(tmp / "cache"))
        calibrate.run(config, calibrate.RunOptions(corpus_path=str(corpus), samples=40, max_tokens_per_sample=64,
                                                   output=str(tmp / "calibration.json")))
    data = json.loads((tmp / "calibration.json").read_text())
    assert sum(r > THRESHOLD for r in data["features"]["firing_rate"]) >= 3, "the mask must hide something"
    return tmp / "calibration.json"


def reference_filter(path, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Mask (allowed) and surprise factor per feature, straight from the file and the documented definitions."""
    data = json.loads(path.read_text())
    rate = np.array(data["features"]["firing_rate"], dtype=np.float64)
    mx = np.array(data["features"]["max"], dtype=np.float64)
    median_max = float(np.median(mx[rate > 0]))
    factor = np.array([
        -math.log10(r) / m if r > 0 else -math.log10(1 / (data["tokens"] + 1)) / median_max
        for r, m in zip(rate, mx)
    ])
    return rate <= threshold, factor


def chat_and_events(srv: RunningServer, max_tokens: int = 12) -> tuple[str, list[dict]]:
    import httpx

    # a prompt subscriber while the chat runs makes the engine compute the prompt positions' features too
    SSEReader(f"{srv.features}/v1/features/stream?include_prompt=true").start()
    r = httpx.post(f"{srv.chat}/v1/chat/completions", json={"messages": MSG, "max_tokens": max_tokens,
                                                             "temperature": 0}, timeout=60).json()
    reader = SSEReader(f"{srv.features}/v1/features/stream?request_id={r['id']}&include_prompt=true",
                       until_complete=1)
    events = [d for e, d in reader.start().wait(60) if e == "feature_activation"]
    assert sum(e["prompt"] for e in events) == r["usage"]["prompt_tokens"]
    assert sum(not e["prompt"] for e in events) == r["usage"]["completion_tokens"] == max_tokens
    return r["choices"][0]["message"]["content"], events


def reference_acts_for(events: list[dict], fx) -> np.ndarray:
    ids = [e["token_id"] for e in events if e["prompt"]] + [e["token_id"] for e in events if not e["prompt"]][:-1]
    return reference_acts(load_npz(fx.sae_path), residuals(fx.model_dir, ids, fx.sae_layer))


@pytest.fixture(scope="module", params=BACKENDS or [pytest.param(None, marks=pytest.mark.skip("no backend"))])
def backend_name(request):
    return request.param


@pytest.fixture(scope="module")
def unfiltered(backend_name, tiny_fixture):
    srv = RunningServer(backend_name, tiny_fixture, top_k=K)
    try:
        yield chat_and_events(srv)
    finally:
        srv.stop()


@pytest.mark.parametrize("mode", ["frequency", "surprise", "combined"])
def test_each_mode_ranks_and_counts_as_the_reference(mode, backend_name, tiny_fixture, cal_path, unfiltered):
    active = filters.build(mode, calibration.load(cal_path), THRESHOLD)
    srv = RunningServer(backend_name, tiny_fixture, top_k=K, feature_filter=active)
    try:
        text, events = chat_and_events(srv)
    finally:
        srv.stop()
    assert text == unfiltered[0], "a filter changes which features are shown, never the text"
    allowed, factor = reference_filter(cal_path, THRESHOLD)
    if mode == "surprise":
        allowed = np.ones_like(allowed)
    acts = reference_acts_for(events, tiny_fixture)
    hidden_somewhere = 0
    for e in events:
        a = acts[e["position"]]
        fired = a > 0
        assert e["l0"] == int(fired.sum())
        # how many fired but were hidden by the frequency mask: counted on the device, matching the reference
        assert e["filtered_count"] == int((fired & ~allowed).sum()), (e["position"], e["prompt"])
        hidden_somewhere += e["filtered_count"]
        score = np.where(allowed & fired, a * (factor if mode != "frequency" else 1.0), -np.inf)
        feats = e["top_features"]
        assert len(feats) == min(K, int(np.isfinite(score).sum()))
        got = np.array([f["index"] for f in feats])
        assert allowed[got].all() and fired[got].all()
        np.testing.assert_allclose([f["activation"] for f in feats], a[got], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose([f["surprise"] for f in feats], a[got] * factor[got], rtol=1e-4, atol=1e-5)
        s = score[got]
        assert np.all(np.diff(s) <= 1e-4 * np.abs(s[:-1]) + 1e-6), "strongest first by the filter's score"
        rest = np.delete(score, got)
        if len(got) and np.isfinite(rest).any():
            assert s[-1] >= rest.max() - 1e-4 * abs(rest.max()), "a better-scored feature was left out"
    if mode == "surprise":
        assert hidden_somewhere == 0
    else:
        assert hidden_somewhere > 0, "the threshold should hide some feature somewhere in this chat"


def test_none_leaves_the_events_unchanged(backend_name, tiny_fixture, cal_path, unfiltered):
    active = filters.build("none", calibration.load(cal_path), THRESHOLD)
    srv = RunningServer(backend_name, tiny_fixture, top_k=K, feature_filter=active)
    try:
        text, events = chat_and_events(srv)
    finally:
        srv.stop()
    assert text == unfiltered[0]
    strip = lambda es: [{k: v for k, v in e.items() if k != "request_id"} for e in es]  # noqa: E731
    assert strip(events) == strip(unfiltered[1])
    assert all(set(e) >= {"top_features", "l0"} and "filtered_count" not in e for e in events)
    assert all(set(f) == {"index", "label", "activation"} for e in events for f in e["top_features"])
    acts = reference_acts_for(events, tiny_fixture)
    for e in events:  # raw activation order
        vals = [f["activation"] for f in e["top_features"]]
        assert vals == sorted(vals, reverse=True)
        assert vals[0] == pytest.approx(float(acts[e["position"]].max()), rel=1e-4)
