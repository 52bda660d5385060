"""Serve-time feature filters built from calibration: a mask and a ranking scale applied before top-k.

- ``frequency``: features with ``firing_rate > threshold`` are excluded (the mask);
- ``surprise``: rank by ``surprise_i = (a_i / max_i) * -log10(firing_rate_i)`` (the scale
  ``-log10(rate_i) / max_i``); a feature that never fired in calibration uses ``rate = 1 / (tokens + 1)`` and,
  for ``max_i``, the median ``max`` of the features that did fire;
- ``combined``: frequency exclusion, then surprise ranking;
- ``none``: the identity.

Reported activations stay raw; the backends apply the filter on the device (no new code path).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuroscope.calibration.stats import Calibration
from neuroscope.config import FILTER_MODES as MODES
from neuroscope.core.protocol import FeatureFilter

DEFAULT_MODE = "combined"
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ActiveFilter:
    """The filter in force, with what the feature events need to report about it."""

    mode: str
    threshold: float
    feature_filter: FeatureFilter
    calibration: str | None = None  # the file it came from
    # per feature ``-log10(rate_i) / max_i`` whenever a calibration is in force (any mode but none): the
    # events' ``surprise`` is the raw activation times this
    surprise: np.ndarray | None = None

    @property
    def scale(self) -> np.ndarray | None:
        return self.feature_filter.scale

    @property
    def mask(self) -> np.ndarray | None:
        return self.feature_filter.mask


def surprise_scale(cal: Calibration) -> np.ndarray:
    """``-log10(rate_i) / max_i`` per feature (float32), with the never-fired rules above."""
    rate = cal.firing_rate.copy()
    mx = cal.max.copy()
    fired = rate > 0
    rate[~fired] = 1.0 / (cal.tokens + 1)
    fill = float(np.median(mx[fired])) if fired.any() else 1.0
    mx[~fired] = fill
    mx[mx <= 0] = fill if fill > 0 else 1.0
    return (-np.log10(rate) / mx).astype(np.float32)


def frequency_mask(cal: Calibration, threshold: float) -> np.ndarray:
    return cal.firing_rate <= threshold


def build(mode: str, cal: Calibration | None, threshold: float = DEFAULT_THRESHOLD) -> ActiveFilter:
    if mode not in MODES:
        raise ValueError(f"unknown feature filter {mode!r} (choose {', '.join(MODES)})")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--filter-threshold must be between 0 and 1, got {threshold}")
    if mode == "none" or cal is None:
        return ActiveFilter("none", threshold, FeatureFilter(), None)
    mask = frequency_mask(cal, threshold) if mode in ("frequency", "combined") else None
    surprise = surprise_scale(cal)
    scale = surprise if mode in ("surprise", "combined") else None
    return ActiveFilter(mode, threshold, FeatureFilter(mask=mask, scale=scale), str(cal.path), surprise)
