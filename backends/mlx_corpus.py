"""The corpus pass on MLX: a batch of samples through the model up to block N, the SAE encode, and the
per-feature reductions, built as one lazy graph and evaluated once. Only ``(4, d_sae)`` statistics (and, when
asked, the packed top-k records) are copied to the host."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from neuroscope.core.protocol import BatchStats, CorpusBatch, CorpusResult


@mx.compile
def reduce(acts: mx.array, counted: mx.array) -> mx.array:
    """``acts`` (n, d_sae) float32, ``counted`` (n,) bool -> (4, d_sae) float32: per feature, over the counted
    positions where it fired, how many, the sum of the activations, the sum of their squared deviations from
    this batch's mean (see :class:`neuroscope.core.protocol.BatchStats`) and the largest."""
    a = mx.where(counted[:, None], acts, mx.zeros_like(acts))  # JumpReLU activations are >= 0
    fired = a > 0
    count = fired.astype(mx.float32).sum(axis=0)
    total = a.sum(axis=0)
    dev = mx.where(fired, a - total / mx.maximum(count, 1.0), mx.zeros_like(a))
    return mx.stack([count, total, (dev * dev).sum(axis=0), a.max(axis=0)])


def corpus_pass(model, sae, layer: int, batch: CorpusBatch, stream, *, records: bool = False) -> CorpusResult:
    B, L = batch.tokens.shape
    with mx.stream(stream):
        tokens = mx.array(np.ascontiguousarray(batch.tokens, dtype=np.int32))
        counted = mx.array(np.ascontiguousarray(batch.counted, dtype=bool).reshape(-1))
        hidden = model.model.block_output(tokens, layer).reshape(B * L, -1)
        acts = sae.encode(hidden)
        stats = reduce(acts, counted)
        packed = sae.pack(acts) if records else None
    mx.eval(stats, *([packed] if records else []))
    host = np.array(stats)
    out_records = None
    if records:
        rows = np.array(packed).reshape(B, L, -1)
        out_records = [rows[b, : int(n)] for b, n in enumerate(batch.lengths)]
    tokens = int(batch.counted.sum())
    return CorpusResult(BatchStats(tokens, count=host[0], sum=host[1], m2=host[2], max=host[3]), out_records)
