"""A feature's decoder-cosine neighbours and direct logit effects in MLX (the feature page).

The same linear algebra as ``backends/torch_explore.py``: ``W_dec @ W_dec[i]`` over the rows' norms (computed
once), and ``W_dec[i] * (1 + final-norm weight)`` through the model's own unembedding (``as_linear``, so a
quantized embedding works too), in float32. ``mx.argpartition`` picks candidates on the device; only those
come back, and the host orders them with ties by the lower index.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from neuroscope.core.protocol import FeatureEffects, ranked

SLACK = 64  # candidates beyond k, so that ties at the k-th value still resolve to the lower index


def _candidates(values: mx.array, k: int, *, largest: bool) -> tuple[mx.array, mx.array, mx.array]:
    """``k + SLACK`` candidates, and how many entries are at least as good as the k-th (when that exceeds the
    candidates, ties straddle the cut and the caller takes every value)."""
    n = values.shape[0]
    c = min(n, k + SLACK)
    keyed = -values if largest else values
    if c >= n:
        ids = mx.arange(n)
    else:
        ids = mx.argpartition(keyed, kth=c - 1)[:c]
    kth = mx.sort(mx.take(keyed, ids))[k - 1]
    return ids, mx.take(values, ids), (keyed <= kth).sum()


class Effects:
    def __init__(self, W_dec: mx.array, embed, norm_weight: mx.array):
        self.W_dec = W_dec.astype(mx.float32)  # (d_sae, d_model)
        self.embed = embed  # the model's embedding module (tied unembedding)
        self.scale = 1.0 + norm_weight.astype(mx.float32)
        self.norms = mx.linalg.norm(self.W_dec, axis=1)
        mx.eval(self.W_dec, self.scale, self.norms)

    def __call__(self, index: int, *, neighbours: int, logits: int) -> FeatureEffects:
        d_sae = self.W_dec.shape[0]
        if not 0 <= index < d_sae:
            raise ValueError(f"feature {index} is out of range: the SAE has {d_sae} features")
        row = self.W_dec[index]
        dots = self.W_dec @ row
        denom = self.norms * self.norms[index]
        cos = mx.where(denom > 0, dots / mx.maximum(denom, 1e-38), mx.zeros_like(dots))
        cos = mx.where(mx.arange(d_sae) == index, mx.array(-np.inf, dtype=mx.float32), cos)
        out = self.embed.as_linear((row * self.scale)[None])[0].astype(mx.float32)
        n, m = min(neighbours, d_sae - 1), min(logits, out.shape[0])
        asked = [(cos, n, True), (out, m, True), (out, m, False)]
        parts = [_candidates(v, k, largest=big) for v, k, big in asked]
        mx.eval(*[a for p in parts for a in p])
        ranks = []
        for (values, k, big), (ids, vals, tied) in zip(asked, parts):
            if int(tied) > ids.shape[0]:  # ties straddle the candidates: every value (degenerate directions only)
                ids, vals = mx.arange(values.shape[0]), values
            ranks.append(ranked(np.array(vals), np.array(ids), k, descending=big))
        (c_ids, c_vals), (p_ids, p_vals), (q_ids, q_vals) = ranks
        return FeatureEffects(c_ids, c_vals, p_ids, p_vals, q_ids, q_vals)
