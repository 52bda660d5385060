"""The small host-side records a backend copies once per token, and how they become :class:`Step`s.

A position's feature record is float32 ``[l0, filtered, k ids, k values]``: ``l0`` counts the features that fired
(activation > 0, before any filter), ``filtered`` those of them the filter's mask excluded (0 without a mask),
then the top-k ids (exact below 2**24) and their raw activations, strongest first by the filter's score. A
generated token's record is ``[token]`` followed by that (``[token]`` alone while capture is off); a prompt
position's is the feature record alone. Features that did not fire (value 0: fewer than k fired, or a masked
feature) are dropped, so a step may carry fewer than k.

When a request asks for logprobs (``GenerationParams.logprobs`` = n), a generated token's record ends with
``[logprob, n ids, n logprobs]`` after that; the core parses it knowing n.

The layout lives here and in the two SAE modules that pack it (``backends/torch_sae.py``, ``backends/mlx_sae.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from neuroscope.core.protocol import Step

HEADER = 2  # l0, filtered
_EMPTY_IDS = np.zeros(0, dtype=np.int64)
_EMPTY_VALUES = np.zeros(0, dtype=np.float32)


class Features(NamedTuple):
    l0: int
    filtered: int
    ids: np.ndarray  # (<= k,) int64, the features that fired, strongest first
    values: np.ndarray  # (<= k,) float32


def width(k: int) -> int:
    """Entries in a feature record of top-``k``."""
    return HEADER + 2 * k


def features(rec: np.ndarray) -> Features:
    """``[l0, filtered, k ids, k values]`` -> the features that fired, strongest first."""
    if rec.size == 0:
        return Features(0, 0, _EMPTY_IDS, _EMPTY_VALUES)
    if rec.size < HEADER or (rec.size - HEADER) % 2:
        raise ValueError(f"a feature record has {HEADER} + 2k entries, got {rec.size}")
    k = (rec.size - HEADER) // 2
    ids = rec[HEADER : HEADER + k].astype(np.int64)
    vals = rec[HEADER + k :].astype(np.float32)
    keep = vals > 0
    return Features(int(rec[0]), int(rec[1]), ids[keep], vals[keep])


def logprob_width(n: int | None) -> int:
    """Entries of the logprob tail of a token record (0 when logprobs are off)."""
    return 0 if n is None else 1 + 2 * n


def token_step(rec: np.ndarray, *, position: int, finish: str | None = None, logprobs: int | None = None) -> Step:
    """A generated token's Step from its record ``[token, l0, filtered, k ids, k values]`` (or ``[token]``),
    followed by ``[logprob, n ids, n logprobs]`` when ``logprobs`` is n (not None)."""
    lp, top = None, None
    if logprobs is not None:
        w = logprob_width(logprobs)
        if rec.size < 1 + w:
            raise ValueError(f"a token record with logprobs {logprobs} has at least {1 + w} entries, got {rec.size}")
        tail, rec = rec[rec.size - w :], rec[: rec.size - w]
        lp = float(tail[0])
        ids = tail[1 : 1 + logprobs].astype(np.int64)
        vals = tail[1 + logprobs :].astype(np.float64)
        top = tuple((int(i), float(v)) for i, v in zip(ids, vals))
    f = features(rec[1:])
    return Step(int(rec[0]), f.ids, f.values, f.l0, position, False, finish, f.filtered, lp, top)


def prompt_step(token_id: int, rec: np.ndarray, *, position: int) -> Step:
    """A prompt token's Step from its position's record ``[l0, filtered, k ids, k values]``."""
    f = features(rec)
    return Step(int(token_id), f.ids, f.values, f.l0, position, True, None, f.filtered)
