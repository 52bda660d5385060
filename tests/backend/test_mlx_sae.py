"""The compiled MLX SAE encoder against the numpy reference, and the feature filter's semantics."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (Linux: pip install 'mlx[cpu]')")
pytest.importorskip("mlx_lm", reason="mlx-lm is not installed")

from backends.mlx_sae import MLXSAE  # noqa: E402
from neuroscope.core.protocol import FeatureFilter  # noqa: E402
from neuroscope.core.sae import SAEWeights, encode_reference, topk_reference  # noqa: E402

D_MODEL, D_SAE, K = 64, 512, 16


@pytest.fixture(scope="module")
def sae() -> SAEWeights:
    """Thresholds near 1 so that both a raw residual (std 3) and an RMS-normalised one fire some features."""
    rng = np.random.default_rng(7)
    W_enc = (rng.standard_normal((D_MODEL, D_SAE)) / np.sqrt(D_MODEL)).astype(np.float32)
    b_enc = (rng.standard_normal(D_SAE) * 0.1).astype(np.float32)
    thr = np.abs(1.0 + rng.standard_normal(D_SAE) * 0.3).astype(np.float32)
    return SAEWeights(W_enc, b_enc, thr, np.ascontiguousarray(W_enc.T), np.zeros(D_MODEL, np.float32))


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return (np.random.default_rng(8).standard_normal((6, D_MODEL)) * 3.0).astype(np.float32)


def _unpack(packed: mx.array, k: int):
    p = np.array(packed)
    assert p.shape[1] == 2 + 2 * k  # [l0, filtered, k ids, k values]
    return p[:, 0].astype(int), p[:, 2 : 2 + k].astype(np.int64), p[:, 2 + k : 2 + 2 * k]


def _bf16_round(a: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even), in numpy, independently of MLX."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("norm", ["none", "rms"])
def test_encode_matches_numpy_reference(sae, x, norm):
    want = encode_reference(sae, x, norm)
    got = np.array(MLXSAE(sae, top_k=K, input_norm=norm).encode(mx.array(x)))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    fired = (want > 0).sum(axis=1)
    assert (fired > 0).all() and (fired < D_SAE // 2).all()  # the test sees both sides of the threshold


def test_input_norms_differ(sae, x):
    raw = (np.array(MLXSAE(sae, top_k=K, input_norm="none").encode(mx.array(x))) > 0).sum()
    rms = (np.array(MLXSAE(sae, top_k=K, input_norm="rms").encode(mx.array(x))) > 0).sum()
    assert raw > 2 * rms  # std-3 inputs are ~3x larger than their RMS-normalised selves


@pytest.mark.parametrize("norm", ["none", "rms"])
def test_topk_matches_reference_strongest_first(sae, x, norm):
    l0, ids, vals = _unpack(MLXSAE(sae, top_k=K, input_norm=norm).topk(mx.array(x)), K)
    acts = encode_reference(sae, x, norm)
    for row in range(len(x)):
        want_ids, want_vals = topk_reference(acts[row], K)
        fired = want_vals > 0
        assert l0[row] == int((acts[row] > 0).sum())
        np.testing.assert_array_equal(ids[row][fired], want_ids[fired])
        np.testing.assert_allclose(vals[row], want_vals, rtol=1e-5, atol=1e-6)
        assert np.all(np.diff(vals[row]) <= 0)


def test_bfloat16_weights_are_a_bf16_matmul_summed_in_float32(sae, x):
    got = np.array(MLXSAE(sae, top_k=K, dtype="bfloat16").encode(mx.array(x)))
    # reference: bf16 inputs and weights, products summed in float32, the sum rounded to bf16, float32 bias
    pre = _bf16_round(_bf16_round(x) @ _bf16_round(sae.W_enc)) + _bf16_round(sae.b_enc)
    want = np.where(pre > sae.threshold, pre, 0.0).astype(np.float32)
    settled = np.abs(pre - sae.threshold) > 0.05  # where a different summation order cannot flip a feature
    # at most one bf16 step apart (the float32 sums differ in their last bits, then round)
    np.testing.assert_allclose(got[settled], want[settled], rtol=8e-3, atol=1e-3)
    # and close to the exact float32 SAE away from the thresholds
    exact = encode_reference(sae, x)
    far = np.abs(x @ sae.W_enc + sae.b_enc - sae.threshold) > 0.1
    np.testing.assert_allclose(got[far], exact[far], rtol=2e-2, atol=5e-2)


def test_unknown_options_are_rejected(sae):
    with pytest.raises(ValueError, match="input norm"):
        MLXSAE(sae, top_k=K, input_norm="layer")
    with pytest.raises(ValueError, match="SAE dtype"):
        MLXSAE(sae, top_k=K, dtype="int8")


# --------------------------------------------------------------------------------------------- filters
def _filtered_reference(acts: np.ndarray, mask, scale):
    scores = acts * (scale if scale is not None else 1.0)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    ids, _ = topk_reference(acts, K, scores=scores)
    vals = acts[ids] if mask is None else np.where(mask[ids], acts[ids], 0.0)
    return ids, vals


def test_mask_excludes_features_and_still_returns_k(sae, x):
    m = MLXSAE(sae, top_k=K)
    acts = encode_reference(sae, x)
    top = np.argsort(-acts, axis=1)[:, :3]  # each row's three strongest features
    mask = np.ones(D_SAE, bool)
    mask[top.ravel()] = False
    m.set_filter(FeatureFilter(mask=mask))
    l0, ids, vals = _unpack(m.topk(mx.array(x)), K)
    assert not np.isin(ids[vals > 0], top.ravel()).any()
    np.testing.assert_array_equal(l0, (acts > 0).sum(axis=1))  # L0 counts before any mask
    for row in range(len(x)):
        want_ids, want_vals = _filtered_reference(acts[row], mask, None)
        fired = want_vals > 0
        assert fired.sum() == min(K, int(((acts[row] > 0) & mask).sum()))  # the next best fill the k slots
        np.testing.assert_array_equal(ids[row][fired], want_ids[fired])
        np.testing.assert_allclose(vals[row], want_vals, rtol=1e-5, atol=1e-6)


def test_mask_leaving_fewer_than_k_features_reports_only_those(sae, x):
    acts = encode_reference(sae, x)
    keep = np.argsort(-acts[0])[:3]  # row 0's three strongest: all fire
    mask = np.zeros(D_SAE, bool)
    mask[keep] = True
    m = MLXSAE(sae, top_k=K)
    m.set_filter(FeatureFilter(mask=mask))
    _, ids, vals = _unpack(m.topk(mx.array(x[:1])), K)
    np.testing.assert_array_equal(ids[0, :3], keep)
    assert np.all(vals[0, 3:] == 0)  # masked features fill the other slots but never count as winners


def test_scale_reorders_but_reports_raw_activations(sae, x):
    m = MLXSAE(sae, top_k=K)
    acts = encode_reference(sae, x)
    for row in range(len(x)):
        firing = np.flatnonzero(acts[row] > 0)
        weakest = int(firing[np.argmin(acts[row, firing])])
        scale = np.ones(D_SAE, np.float32)
        scale[weakest] = 1000.0
        m.set_filter(FeatureFilter(scale=scale))
        _, ids, vals = _unpack(m.topk(mx.array(x[row : row + 1])), K)
        assert ids[0, 0] == weakest  # promoted to first place...
        assert vals[0, 0] == pytest.approx(acts[row, weakest], rel=1e-5)  # ...with its raw activation
        want_ids, want_vals = _filtered_reference(acts[row], None, scale)
        fired = want_vals > 0
        np.testing.assert_array_equal(ids[0][fired], want_ids[fired])
        np.testing.assert_allclose(vals[0], want_vals, rtol=1e-5, atol=1e-6)
    m.set_filter(FeatureFilter())  # back to the identity
    _, ids, _ = _unpack(m.topk(mx.array(x)), K)
    assert list(ids[:, 0]) == [int(np.argmax(a)) for a in acts]


def test_filter_shape_is_validated(sae):
    with pytest.raises(ValueError, match="mask"):
        MLXSAE(sae, top_k=K).set_filter(FeatureFilter(mask=np.ones(D_SAE - 1, bool)))
