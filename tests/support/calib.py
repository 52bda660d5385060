"""Helpers for calibration tests: a small text corpus and a numpy reference of the calibration statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neuroscope.core.fixtures import _CORPUS
from tests.support.reference import reference_acts, residuals

LINES = [line for line in _CORPUS.splitlines() if line.strip()]


def write_corpus(directory: Path, n: int) -> Path:
    """``n`` samples of one to five fixture lines each (different lengths, some with several sentences)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        text = " ".join(LINES[(i * 3 + j) % len(LINES)] for j in range(1 + i % 5))
        (directory / f"{i:04d}.txt").write_text(text + "\n", encoding="utf-8")
    return directory


def reference_statistics(fx, sae, tokenizer, texts: list[str], max_tokens: int, norm: str = "none") -> dict:
    """The calibration ``features`` and ``summary`` by their definitions, from transformers' residuals: every
    sample is ``[BOS] + tokens`` cut to ``max_tokens``; position 0 and special tokens never count."""
    special = set(tokenizer.all_special_ids)
    rows = []
    for text in texts:
        ids = ([tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False))[:max_tokens]
        acts = reference_acts(sae, residuals(fx.model_dir, ids, fx.sae_layer), norm).astype(np.float64)
        rows.append(acts[[j for j, t in enumerate(ids) if j > 0 and t not in special]])
    a = np.concatenate(rows)
    fired = a > 0
    rate = fired.mean(0)
    mean = np.array([a[fired[:, i], i].mean() if fired[:, i].any() else 0.0 for i in range(a.shape[1])])
    std = np.array([a[fired[:, i], i].std() if fired[:, i].any() else 0.0 for i in range(a.shape[1])])
    return {
        "tokens": len(a),
        "features": {"firing_rate": rate, "mean": mean, "std": std, "max": a.max(0)},
        "summary": {"dead": int((~fired.any(0)).sum()), "dense": int((rate > 0.10).sum()),
                    "mean_l0": float(fired.sum(1).mean())},
    }
