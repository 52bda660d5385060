"""The packed records of both SAE implementations under every kind of filter, against numpy: the ranking, the
raw values, L0 and the masked count ``filtered`` (``[l0, filtered, k ids, k values]``)."""

from __future__ import annotations

import numpy as np
import pytest

from neuroscope.core.fixtures import random_sae
from neuroscope.core.protocol import FeatureFilter
from neuroscope.core.records import features
from neuroscope.core.sae import encode_reference

D_MODEL, D_SAE, K = 16, 64, 6


def _torch(sae):
    torch = pytest.importorskip("torch")
    from backends.torch_sae import TorchSAE

    enc = TorchSAE(sae, torch.device("cpu"), top_k=K)
    return enc, lambda x: enc.topk(torch.from_numpy(x)).numpy()


def _mlx(sae):
    mx = pytest.importorskip("mlx.core", reason="mlx is not installed (Linux: pip install 'mlx[cpu]')")
    from backends.mlx_sae import MLXSAE

    enc = MLXSAE(sae, top_k=K)
    return enc, lambda x: np.array(enc.topk(mx.array(x)))


@pytest.fixture(params=[_torch, _mlx], ids=["torch", "mlx"])
def sae_and_pack(request):
    sae = random_sae(D_MODEL, D_SAE, seed=3)
    enc, pack = request.param(sae)
    return sae, enc, pack


def _filters(acts: np.ndarray):
    rng = np.random.default_rng(0)
    dense = np.argsort(-(acts > 0).sum(0))[:10]  # hide the features that fire most
    mask = np.ones(D_SAE, bool)
    mask[dense] = False
    scale = rng.uniform(0.1, 3.0, D_SAE).astype(np.float32)
    few = np.zeros(D_SAE, bool)
    few[dense[:3]] = True  # fewer than k allowed: masked features fill slots but never count
    return {"none": FeatureFilter(), "mask": FeatureFilter(mask=mask), "scale": FeatureFilter(scale=scale),
            "both": FeatureFilter(mask=mask, scale=scale), "few": FeatureFilter(mask=few)}


@pytest.mark.parametrize("name", ["none", "mask", "scale", "both", "few"])
def test_records_match_numpy(sae_and_pack, name):
    sae, enc, pack = sae_and_pack
    x = (np.random.default_rng(1).standard_normal((20, D_MODEL)) * 3).astype(np.float32)
    acts = encode_reference(sae, x)
    flt = _filters(acts)[name]
    enc.set_filter(flt)
    rows = pack(x)
    assert rows.shape == (20, 2 + 2 * K)
    mask = flt.mask if flt.mask is not None else np.ones(D_SAE, bool)
    scale = flt.scale if flt.scale is not None else np.ones(D_SAE, np.float32)
    for row, a in zip(rows, acts):
        f = features(row)
        fired = a > 0
        assert f.l0 == int(fired.sum())
        assert f.filtered == int((fired & ~mask).sum())
        score = np.where(mask & fired, a * scale, -np.inf)
        want = [i for i in np.argsort(-score, kind="stable") if np.isfinite(score[i])][:K]
        assert len(f.ids) == len(want)
        np.testing.assert_allclose(f.values, a[f.ids], rtol=1e-5, atol=1e-6)  # raw activations
        np.testing.assert_allclose(np.sort(score[f.ids]), np.sort(score[want]), rtol=1e-5)
    if name in ("mask", "both", "few"):
        assert sum(features(r).filtered for r in rows) > 0
