"""Timing helpers: repeat a call under a count and time budget, and summarise samples in milliseconds."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def time_calls(fn: Callable[[int], object], *, iters: int, warmup: int, budget_s: float, min_iters: int = 5) -> list[float]:
    """Call ``fn(i)`` ``warmup`` times untimed, then up to ``iters`` times (at least ``min_iters``, stopping
    once ``budget_s`` is spent); return the per-call seconds. ``fn`` must finish its work (sync) itself."""
    for i in range(warmup):
        fn(i)
    out: list[float] = []
    start = time.perf_counter()
    for i in range(iters):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
        if len(out) >= min_iters and time.perf_counter() - start > budget_s:
            break
    return out


def summarize_ms(samples_s: list[float] | np.ndarray) -> dict[str, float | int]:
    """Median / p10 / p90 / mean in milliseconds, and the sample count."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    if a.size == 0:
        raise ValueError("no samples")
    return {
        "median_ms": float(np.median(a)),
        "p10_ms": float(np.percentile(a, 10)),
        "p90_ms": float(np.percentile(a, 90)),
        "mean_ms": float(a.mean()),
        "n": int(a.size),
    }

