"""A feature's neighbours and logit effects computed here with numpy from the checkpoint's own files (the
safetensors and the SAE's npz), never through the code under test."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load_file


def checkpoint_tensors(fx):
    weights = {}
    for f in sorted(fx.model_dir.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    unembed = weights["model.embed_tokens.weight"].astype(np.float64)
    scale = 1.0 + weights["model.norm.weight"].astype(np.float64)
    with np.load(fx.sae_path, allow_pickle=False) as z:
        W_dec = z["W_dec"].astype(np.float64)
    return unembed, scale, W_dec


def neighbours(W_dec, i, n=10):
    """(ids, cosines): the n rows closest to row i by cosine, itself excluded, ties by the lower index."""
    norms = np.linalg.norm(W_dec, axis=1)
    denom = norms * norms[i]
    cos = np.where(denom > 0, W_dec @ W_dec[i] / np.where(denom > 0, denom, 1), 0.0)
    ids = sorted((j for j in range(len(W_dec)) if j != i), key=lambda j: (-round(cos[j], 5), j))[:n]
    return ids, cos[ids]


def logits(unembed, scale, W_dec, i, m=10):
    """(positive ids, their values, negative ids, their values) of ``W_dec[i] * scale @ unembed.T``."""
    out = unembed @ (W_dec[i] * scale)
    pos = sorted(range(len(out)), key=lambda t: (-round(out[t], 5), t))[:m]
    neg = sorted(range(len(out)), key=lambda t: (round(out[t], 5), t))[:m]
    return pos, out[pos], neg, out[neg]
