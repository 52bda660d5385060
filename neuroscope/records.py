"""The small host-side records a backend copies once per token, and how they become :class:`Step`s.

A generated token's record is float32 ``[token, l0, k ids, k values]`` (ids are exact below 2**24); with
capture off it is ``[token]`` alone. A prompt position's record is ``[l0, k ids, k values]``. Features that
did not fire (value 0: fewer than k fired, or a masked feature) are dropped, so a step may carry fewer than k.
"""

from __future__ import annotations

import numpy as np

from neuroscope.protocol import Step

_EMPTY_IDS = np.zeros(0, dtype=np.int64)
_EMPTY_VALUES = np.zeros(0, dtype=np.float32)


def features(rec: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """``[l0, k ids, k values]`` -> (l0, ids, values) of the features that fired, strongest first."""
    if rec.size == 0:
        return 0, _EMPTY_IDS, _EMPTY_VALUES
    if rec.size % 2 != 1:
        raise ValueError(f"a feature record has 1 + 2k entries, got {rec.size}")
    k = (rec.size - 1) // 2
    ids = rec[1 : 1 + k].astype(np.int64)
    vals = rec[1 + k :].astype(np.float32)
    keep = vals > 0
    return int(rec[0]), ids[keep], vals[keep]


def token_step(rec: np.ndarray, *, position: int, finish: str | None = None) -> Step:
    """A generated token's Step from its record ``[token, l0, k ids, k values]`` (or ``[token]``)."""
    l0, ids, vals = features(rec[1:])
    return Step(int(rec[0]), ids, vals, l0, position, False, finish)


def prompt_step(token_id: int, rec: np.ndarray, *, position: int) -> Step:
    """A prompt token's Step from its position's record ``[l0, k ids, k values]``."""
    l0, ids, vals = features(rec)
    return Step(int(token_id), ids, vals, l0, position, True, None)
