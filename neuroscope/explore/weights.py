"""A feature's neighbours and logit effects without the model: the SAE's decoder, and from the checkpoint only
the unembedding (the tied embedding) and the final norm's weight, memory-mapped from its safetensors files.

What ``neuroscope features show`` uses; a served page asks the backend instead (the weights already on the
device). The arithmetic is the backends': cosines over ``W_dec`` rows, ``W_dec[i] * (1 + norm weight)`` times
the unembedding in float32 (read in row chunks, so a bf16 unembedding is never converted whole), ties by the
lower index.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from neuroscope.core import safetensors_np
from neuroscope.core.protocol import FeatureEffects, ranked

UNEMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
CHUNK = 32768
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


class WeightsError(ValueError):
    """The checkpoint lacks a tensor or is not readable safetensors (user-facing)."""


def _header(path: Path) -> tuple[dict, int]:
    try:
        return safetensors_np.read_header(path)
    except safetensors_np.SafetensorsError as exc:
        raise WeightsError(str(exc)) from None


def _files(model_dir: Path, name: str) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            where = json.loads(index.read_text(encoding="utf-8"))["weight_map"].get(name)
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise WeightsError(f"{index} is not a safetensors index: {exc}") from None
        return [model_dir / where] if where else []
    return sorted(model_dir.glob("*.safetensors"))


def tensor(model_dir: str | Path, name: str) -> tuple[np.ndarray, bool]:
    """One tensor, memory-mapped, and whether it is bf16 (then held as raw uint16: see :func:`as_float32`)."""
    model_dir = Path(model_dir)
    for f in _files(model_dir, name):
        header, start = _header(f)
        meta = header.get(name)
        if meta is None:
            continue
        dtype = _DTYPES.get(meta.get("dtype"))
        if dtype is None:
            raise WeightsError(f"{name} in {f} is {meta.get('dtype')}; only F32, F16 and BF16 are read")
        a, b = meta["data_offsets"]
        shape = tuple(meta["shape"])
        arr = np.memmap(f, dtype=dtype, mode="r", offset=start + a, shape=shape)
        if arr.nbytes != b - a:
            raise WeightsError(f"{name} in {f}: its size does not match its shape")
        return arr, meta["dtype"] == "BF16"
    raise WeightsError(f"the checkpoint in {model_dir} has no tensor {name}")


def as_float32(arr: np.ndarray, bf16: bool) -> np.ndarray:
    if bf16:
        return (np.asarray(arr).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(arr, dtype=np.float32)


def effects(model_dir: str | Path, W_dec: np.ndarray, index: int, *, neighbours: int = 10,
            logits: int = 10) -> FeatureEffects:
    d_sae = W_dec.shape[0]
    if not 0 <= index < d_sae:
        raise ValueError(f"feature {index} is out of range: the SAE has {d_sae} features")
    W = np.asarray(W_dec, dtype=np.float32)
    row = W[index]
    norms = np.linalg.norm(W, axis=1)
    denom = norms * norms[index]
    cos = np.where(denom > 0, (W @ row) / np.where(denom > 0, denom, 1.0), 0.0).astype(np.float32)
    others = np.delete(np.arange(d_sae), index)
    n_ids, n_cos = ranked(cos[others], others, min(neighbours, d_sae - 1), descending=True)
    unembed, bf16 = tensor(model_dir, UNEMBED)
    v = row * (1.0 + as_float32(*tensor(model_dir, FINAL_NORM)))
    out = np.empty(unembed.shape[0], dtype=np.float32)
    for s in range(0, len(out), CHUNK):
        out[s:s + CHUNK] = as_float32(unembed[s:s + CHUNK], bf16) @ v
    ids = np.arange(len(out))
    m = min(logits, len(out))
    p_ids, p_vals = ranked(out, ids, m, descending=True)
    q_ids, q_vals = ranked(out, ids, m, descending=False)
    return FeatureEffects(n_ids, n_cos, p_ids, p_vals, q_ids, q_vals)
