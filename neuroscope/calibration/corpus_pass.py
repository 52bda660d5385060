"""The core half of the corpus pass: samples -> token ids -> padded batches -> a backend's ``corpus_pass``.

A sample is ``[BOS] + its text's tokens``, truncated to ``max_tokens`` (BOS included). A batch right-pads its
samples to the longest one; with causal attention a real position never sees the pads after it, so positions
0..L-1 serve every row. Which positions count toward statistics is decided here, once, for every backend: never
a pad, never a sample's position 0, never BOS or any other special token of the tokenizer.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from neuroscope.core.protocol import Backend, CorpusBatch, CorpusResult


def special_ids(tokenizer: Any) -> frozenset[int]:
    """Every id that never counts: the tokenizer's special tokens (BOS, EOS, pad, turn markers, …)."""
    ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            ids.add(value)
    return frozenset(ids)


def pad_id(tokenizer: Any) -> int:
    value = getattr(tokenizer, "pad_token_id", None)
    return int(value) if isinstance(value, int) else 0


def tokenize(tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    """``[BOS] + text tokens``, at most ``max_tokens`` ids in all (BOS included)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    bos = getattr(tokenizer, "bos_token_id", None)
    head = [int(bos)] if isinstance(bos, int) else []
    body = tokenizer.encode(text, add_special_tokens=False)
    return (head + [int(t) for t in body])[:max_tokens]


def make_batch(samples: Sequence[Sequence[int]], skip: Collection[int], pad: int = 0) -> CorpusBatch:
    """Right-pad ``samples`` into one :class:`CorpusBatch` and mark the positions that count."""
    if not samples or any(len(s) == 0 for s in samples):
        raise ValueError("a corpus batch needs at least one sample, each with at least one token")
    lengths = np.array([len(s) for s in samples], dtype=np.int64)
    L = int(lengths.max())
    tokens = np.full((len(samples), L), pad, dtype=np.int32)
    for b, s in enumerate(samples):
        tokens[b, : len(s)] = s
    real = np.arange(L)[None, :] < lengths[:, None]
    counted = real & ~np.isin(tokens, np.fromiter(skip, dtype=np.int64, count=len(skip)))
    counted[:, 0] = False  # a sample's first position never counts (BOS, or whatever stands there)
    return CorpusBatch(tokens, lengths, counted)


def run_batch(backend: Backend, samples: Sequence[Sequence[int]], skip: Collection[int], pad: int = 0,
              *, records: bool = False) -> CorpusResult:
    """One batch through ``backend.corpus_pass``."""
    return backend.corpus_pass(make_batch(samples, skip, pad), records=records)
