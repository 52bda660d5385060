"""Calibration statistics against a direct numpy computation over per-position activations, the file format,
resuming from a checkpointed state, and every way a calibration file can be wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuroscope.calibration import stats as calibration
from neuroscope.calibration.stats import Accumulator, BatchStats, CalibrationError

D_SAE = 12
IDENTITY = {"model": "m", "sae": "repo", "sae_path": "layer_2/params.npz", "layer": 2, "d_sae": D_SAE,
            "sae_input_norm": "none"}


def _acts(seed: int = 0, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    acts = np.where(rng.random((n, D_SAE)) < np.linspace(0.0, 0.6, D_SAE), rng.gamma(2.0, 1.5, (n, D_SAE)), 0.0)
    acts[:, 0] = 0.0  # a dead feature
    return acts.astype(np.float32)


def _batch(acts: np.ndarray) -> BatchStats:  # what a backend's device reduction returns
    fired = acts > 0
    a = acts.astype(np.float64)
    mean = a.sum(0) / np.maximum(fired.sum(0), 1)
    return BatchStats(len(acts), count=fired.sum(0).astype(np.float64), sum=a.sum(0),
                      m2=(np.where(fired, a - mean, 0.0) ** 2).sum(0), max=a.max(0))


def _accumulate(acts: np.ndarray, batches: int) -> Accumulator:
    acc = Accumulator(D_SAE)
    for part in np.array_split(acts, batches):
        acc.add(_batch(part), samples=1)
    return acc


def test_statistics_equal_a_direct_computation():
    acts = _acts()
    out = _accumulate(acts, 7).to_json(IDENTITY)
    feats = out["features"]
    for i in range(D_SAE):
        col = acts[:, i].astype(np.float64)
        on = col[col > 0]
        assert feats["firing_rate"][i] == pytest.approx(on.size / len(col))
        assert feats["mean"][i] == pytest.approx(on.mean() if on.size else 0.0)
        assert feats["std"][i] == pytest.approx(on.std() if on.size else 0.0, abs=1e-9)
        assert feats["max"][i] == pytest.approx(col.max())
    assert out["tokens"] == len(acts) and out["samples"] == 7
    assert out["summary"] == {
        "dead": 1,
        "dense": int(((acts > 0).mean(0) > 0.10).sum()),
        "mean_l0": pytest.approx((acts > 0).sum(1).mean()),
    }
    assert out["format"] == "neuroscope-calibration/1"
    assert {k: out[k] for k in IDENTITY} == IDENTITY
    assert all(len(v) == D_SAE for v in feats.values())


def test_batching_does_not_change_the_result():
    acts = _acts(3)
    one, many = _accumulate(acts, 1).features(), _accumulate(acts, 13).features()
    for k in one:
        np.testing.assert_allclose(one[k], many[k], rtol=1e-12, atol=1e-12)


def _float32_batch(acts: np.ndarray) -> BatchStats:  # reduced in float32, as a device does it
    a = acts.astype(np.float32)
    fired = a > 0
    count = fired.sum(0).astype(np.float32)
    total = a.sum(0, dtype=np.float32)
    dev = np.where(fired, a - total / np.maximum(count, 1), np.float32(0))
    return BatchStats(len(a), count=count, sum=total, m2=(dev * dev).sum(0, dtype=np.float32), max=a.max(0))


def test_a_feature_that_barely_varies_keeps_its_spread():
    """A large mean and a small spread, reduced in float32 per batch: a sum of squares minus the squared mean
    would lose the spread entirely; the combined deviations keep it (and a constant feature has std 0)."""
    rng = np.random.default_rng(1)
    acts = np.stack([1000.0 + 0.01 * rng.standard_normal(4000), np.full(4000, 3.0)], axis=1)
    acc = Accumulator(2)
    for part in np.array_split(acts, 40):
        acc.add(_float32_batch(part), samples=1)
    std = acc.features()["std"]
    assert std[0] == pytest.approx(acts[:, 0].std(), rel=1e-2)
    assert std[1] == 0.0


def test_a_resumed_accumulator_equals_an_uninterrupted_one():
    acts = _acts(5)
    parts = np.array_split(acts, 6)
    whole = Accumulator(D_SAE)
    for p in parts:
        whole.add(_batch(p), samples=1)
    first = Accumulator(D_SAE)
    for p in parts[:3]:
        first.add(_batch(p), samples=1)
    resumed = Accumulator.from_state(json.loads(json.dumps(first.state())))
    for p in parts[3:]:
        resumed.add(_batch(p), samples=1)
    a, b = whole.to_json(IDENTITY), resumed.to_json(IDENTITY)
    a.pop("created"), b.pop("created")
    assert a == b


def test_a_batch_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="12 features"):
        Accumulator(D_SAE).add(_batch(np.zeros((3, 5), np.float32)), samples=1)


def _write(tmp_path, data) -> str:
    p = tmp_path / "cal.json"
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(p)


def test_load_checks_the_file(tmp_path):
    good = _accumulate(_acts(), 3).to_json(IDENTITY)
    cal = calibration.load(_write(tmp_path, good))
    assert cal.tokens == 300 and cal.firing_rate.shape == (D_SAE,)
    cases = [
        ("{not json", "not valid JSON"),
        ({**good, "format": "other/1"}, "not a neuroscope-calibration/1 file"),
        ({**good, "features": {**good["features"], "max": [1.0] * 3}}, "features.max must be a list of 12"),
        ({**good, "features": {**good["features"], "mean": [float("nan")] * D_SAE}}, "non-finite"),
        ({**good, "tokens": 0}, "tokens must be a positive integer"),
    ]
    for data, message in cases:
        with pytest.raises(CalibrationError, match=message):
            calibration.load(_write(tmp_path, data))
    with pytest.raises(CalibrationError, match="not found"):
        calibration.load(tmp_path / "missing.json")


def test_a_file_made_for_another_configuration_names_what_differs(tmp_path):
    cal = calibration.load(_write(tmp_path, _accumulate(_acts(), 2).to_json(IDENTITY)))
    cal.check_identity(IDENTITY)
    with pytest.raises(CalibrationError, match=r"layer 2 \(serving 5\); sae_input_norm 'none' \(serving 'rms'\)"):
        cal.check_identity({**IDENTITY, "layer": 5, "sae_input_norm": "rms"})
