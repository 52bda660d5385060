"""Serve-time filters: each mode ranks exactly as a direct numpy computation of its definition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neuroscope.calibration import filters
from neuroscope.calibration.stats import Calibration

RATE = [0.0, 0.9, 0.5, 0.51, 0.01, 0.2, 0.0001, 0.0]
MAX = [0.0, 4.0, 2.0, 8.0, 1.0, 10.0, 3.0, 0.0]
TOKENS = 999


def _cal() -> Calibration:
    n = len(RATE)
    data = {"d_sae": n, "tokens": TOKENS,
            "features": {"firing_rate": RATE, "max": MAX, "mean": [0.0] * n, "std": [0.0] * n}}
    return Calibration(path="cal.json", data=data)  # type: ignore[arg-type]


def _reference_surprise(acts: np.ndarray) -> np.ndarray:
    fired_max = [m for r, m in zip(RATE, MAX) if r > 0]
    median_max = sorted(fired_max)[len(fired_max) // 2] if len(fired_max) % 2 else (
        sum(sorted(fired_max)[len(fired_max) // 2 - 1 : len(fired_max) // 2 + 1]) / 2)
    out = []
    for a, r, m in zip(acts, RATE, MAX):
        if r <= 0:
            r, m = 1 / (TOKENS + 1), median_max
        out.append((a / m) * -math.log10(r))
    return np.array(out)


def _rank(flt, acts):
    scores = acts * (flt.scale if flt.scale is not None else 1.0)
    if flt.mask is not None:
        scores = np.where(flt.mask, scores, -np.inf)
    return [int(i) for i in np.argsort(-scores, kind="stable") if np.isfinite(scores[i]) and acts[i] > 0]


ACTS = np.array([0.0, 3.0, 1.5, 6.0, 0.4, 2.0, 0.2, 0.0], dtype=np.float32)


def test_none_is_the_identity():
    f = filters.build("none", _cal())
    assert f.feature_filter.is_identity and f.mode == "none" and f.surprise is None
    assert filters.build("combined", None).mode == "none"  # no calibration: no filter


@pytest.mark.parametrize("mode", ["frequency", "surprise", "combined"])
def test_every_calibrated_mode_reports_surprise(mode):
    f = filters.build(mode, _cal())
    np.testing.assert_allclose(ACTS * f.surprise, _reference_surprise(ACTS), rtol=1e-6)
    assert f.calibration == "cal.json"


def test_frequency_excludes_features_above_the_threshold():
    f = filters.build("frequency", _cal(), threshold=0.5)
    assert f.scale is None
    assert f.mask.tolist() == [r <= 0.5 for r in RATE]
    assert _rank(f.feature_filter, ACTS) == [5, 2, 4, 6]  # by raw activation, features 1 and 3 excluded


def test_surprise_ranks_by_its_definition():
    f = filters.build("surprise", _cal())
    assert f.mask is None
    want = _reference_surprise(ACTS)
    np.testing.assert_allclose(ACTS * f.scale, want, rtol=1e-6)
    assert _rank(f.feature_filter, ACTS) == [int(i) for i in np.argsort(-want, kind="stable") if ACTS[i] > 0]


def test_never_fired_features_use_one_over_tokens_and_the_median_max():
    scale = filters.surprise_scale(_cal())
    median_max = float(np.median([m for r, m in zip(RATE, MAX) if r > 0]))
    assert scale[0] == pytest.approx(-math.log10(1 / (TOKENS + 1)) / median_max)
    assert scale[7] == scale[0]


def test_combined_excludes_then_ranks_by_surprise():
    f = filters.build("combined", _cal(), threshold=0.5)
    want = _reference_surprise(ACTS)
    allowed = [i for i in np.argsort(-want, kind="stable") if ACTS[i] > 0 and RATE[i] <= 0.5]
    assert _rank(f.feature_filter, ACTS) == allowed
    assert 1 not in allowed and 3 not in allowed


@pytest.mark.parametrize("mode,threshold,message", [("loud", 0.5, "unknown feature filter 'loud'"),
                                                    ("frequency", 1.5, "between 0 and 1")])
def test_bad_options(mode, threshold, message):
    with pytest.raises(ValueError, match=message):
        filters.build(mode, _cal(), threshold)
