"""SAE weights: the numpy reference encoder against a hand computation, and every way a params.npz can be wrong."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from neuroscope.core.sae import (
    RMS_EPS,
    SAEError,
    SAEWeights,
    encode_reference,
    load_npz,
    normalize_input,
    save_npz,
    topk_reference,
)
from neuroscope.core.sae_formats import locate

D_MODEL, D_SAE = 6, 9


def make_sae(d_model: int = D_MODEL, d_sae: int = D_SAE, seed: int = 0, **override) -> SAEWeights:
    rng = np.random.default_rng(seed)
    arrays = {
        "W_enc": rng.standard_normal((d_model, d_sae)).astype(np.float32),
        "b_enc": (rng.standard_normal(d_sae) * 0.1).astype(np.float32),
        "threshold": np.abs(rng.standard_normal(d_sae)).astype(np.float32) * 0.5,
        "W_dec": rng.standard_normal((d_sae, d_model)).astype(np.float32),
        "b_dec": rng.standard_normal(d_model).astype(np.float32),
    }
    arrays.update(override)
    return SAEWeights(**arrays, source="test")


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def good_arrays(d_model: int = D_MODEL, d_sae: int = D_SAE) -> dict[str, np.ndarray]:
    s = make_sae(d_model, d_sae)
    return {"W_enc": s.W_enc, "b_enc": s.b_enc, "threshold": s.threshold, "W_dec": s.W_dec, "b_dec": s.b_dec}


# ------------------------------------------------------------------------------------------ reference encoder
def hand_encode(sae: SAEWeights, x: np.ndarray, norm: str = "none") -> np.ndarray:
    """Per-element loops in float64: pre_j = sum_i x_i W[i, j] + b_j; act_j = pre_j if pre_j > thr_j else 0."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    out = np.zeros((x.shape[0], sae.d_sae))
    for r, row in enumerate(x):
        if norm == "rms":
            rms = math.sqrt(sum(v * v for v in row) / len(row) + RMS_EPS)
            row = [v / rms for v in row]
        for j in range(sae.d_sae):
            pre = sum(float(row[i]) * float(sae.W_enc[i, j]) for i in range(sae.d_model)) + float(sae.b_enc[j])
            out[r, j] = pre if pre > float(sae.threshold[j]) else 0.0
    return out


def test_encode_reference_matches_a_hand_computation():
    sae = make_sae()
    x = np.random.default_rng(5).standard_normal((4, D_MODEL)).astype(np.float32)
    got = encode_reference(sae, x)
    want = hand_encode(sae, x)
    assert got.shape == (4, D_SAE)
    # some features fire and some do not, so both branches of the JumpReLU are exercised
    assert (want > 0).any() and (want == 0).any()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert ((got == 0) == (want == 0)).all()


def test_encode_reference_single_vector():
    sae = make_sae()
    x = np.random.default_rng(6).standard_normal(D_MODEL).astype(np.float32)
    got = encode_reference(sae, x)
    assert got.shape == (D_SAE,)
    np.testing.assert_allclose(got, hand_encode(sae, x)[0], rtol=1e-5, atol=1e-5)


def test_jumprelu_is_strict_at_the_threshold():
    thr = np.full(3, 0.75, dtype=np.float32)
    above = np.nextafter(thr, np.float32(np.inf))
    zeros_w = np.zeros((2, 3), dtype=np.float32)
    # with a zero encoder, pre == b_enc
    at = make_sae(2, 3, W_enc=zeros_w, b_enc=thr.copy(), threshold=thr, W_dec=np.zeros((3, 2), np.float32),
                  b_dec=np.zeros(2, np.float32))
    assert (encode_reference(at, np.ones(2)) == 0).all(), "pre == threshold must give 0"
    over = make_sae(2, 3, W_enc=zeros_w, b_enc=above, threshold=thr, W_dec=np.zeros((3, 2), np.float32),
                    b_dec=np.zeros(2, np.float32))
    np.testing.assert_array_equal(encode_reference(over, np.ones(2)), above)  # the full pre, not pre - thr


def test_negative_thresholds_never_let_negative_activations_through():
    """JumpReLU is relu(pre) * (pre > threshold): a pre-activation above a negative threshold but below zero
    gives 0, not the negative value (Gemma Scope's reference code, SAELens)."""
    thr = np.array([-1.0, -1.0, -1.0], dtype=np.float32)
    sae = make_sae(1, 3, W_enc=np.zeros((1, 3), np.float32), b_enc=np.array([-0.5, -1.5, 0.25], np.float32),
                   threshold=thr, W_dec=np.zeros((3, 1), np.float32), b_dec=np.zeros(1, np.float32))
    np.testing.assert_array_equal(encode_reference(sae, np.zeros(1)), np.array([0.0, 0.0, 0.25], np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int64])
def test_encode_reference_returns_float32(dtype):
    sae = make_sae()
    x = (np.arange(D_MODEL) - 2).astype(dtype)
    assert encode_reference(sae, x).dtype == np.float32
    assert encode_reference(sae, x, "rms").dtype == np.float32


def identity_sae(d: int) -> SAEWeights:
    """acts == (normalised) input: W_enc = I, b_enc = 0, thresholds far below anything."""
    return make_sae(d, d, W_enc=np.eye(d, dtype=np.float32), b_enc=np.zeros(d, np.float32),
                    threshold=np.full(d, -1e30, np.float32), W_dec=np.eye(d, dtype=np.float32),
                    b_dec=np.zeros(d, np.float32))


def test_rms_norm_divides_each_vector_by_its_own_rms():
    x = np.array([[3.0, -4.0, 0.0, 12.0], [100.0, 100.0, 100.0, 100.0]], dtype=np.float32)
    got = encode_reference(identity_sae(4), x, norm="rms")
    for r in range(2):
        rms = math.sqrt(sum(float(v) ** 2 for v in x[r]) / 4 + RMS_EPS)
        np.testing.assert_allclose(got[r], np.maximum(x[r] / rms, 0), rtol=1e-6)  # the identity SAE's relu
    # the second row is constant: it normalises to (almost exactly) ones whatever its scale
    np.testing.assert_allclose(got[1], np.ones(4), rtol=1e-6)
    # and the rms result differs from the raw one
    assert not np.allclose(encode_reference(identity_sae(4), x, norm="none"), got)


def test_rms_norm_uses_the_epsilon_for_tiny_vectors():
    x = np.full(4, 1e-4, dtype=np.float32)  # mean square 1e-8, much smaller than RMS_EPS
    got = normalize_input(x, "rms")
    np.testing.assert_allclose(got, x / math.sqrt(1e-8 + RMS_EPS), rtol=1e-5)
    assert np.all(got < 0.2)  # without the epsilon it would be 1.0
    assert np.all(np.isfinite(normalize_input(np.zeros(4), "rms")))


def test_rms_norm_matches_hand_computation_through_the_encoder():
    sae = make_sae()
    x = np.random.default_rng(9).standard_normal((3, D_MODEL)).astype(np.float32) * 7
    np.testing.assert_allclose(encode_reference(sae, x, "rms"), hand_encode(sae, x, "rms"), rtol=1e-5, atol=1e-5)


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="layer"):
        normalize_input(np.ones(3), "layer")


def test_topk_reference_orders_strongest_first():
    acts = np.array([0.0, 3.0, 1.0, 7.0, 0.5, 3.0], dtype=np.float32)
    ids, vals = topk_reference(acts, 3)
    assert ids.tolist() == [3, 1, 5]  # ties keep the lower index first
    assert vals.tolist() == [7.0, 3.0, 3.0]
    assert ids.dtype == np.int64 and vals.dtype == np.float32


def test_topk_reference_k_larger_than_d_sae():
    ids, vals = topk_reference(np.array([1.0, 2.0], np.float32), 10)
    assert ids.tolist() == [1, 0] and vals.tolist() == [2.0, 1.0]


def test_topk_reference_ranks_by_scores_but_reports_activations():
    acts = np.array([5.0, 1.0, 3.0], dtype=np.float32)
    scores = np.array([0.0, 10.0, 2.0], dtype=np.float32)
    ids, vals = topk_reference(acts, 2, scores)
    assert ids.tolist() == [1, 2]
    assert vals.tolist() == [1.0, 3.0]


# ---------------------------------------------------------------------------------------------- loading
def test_load_npz_round_trips_save_npz(tmp_path):
    sae = make_sae()
    path = tmp_path / "params.npz"
    save_npz(path, sae)
    back = load_npz(path)
    for k in ("W_enc", "b_enc", "threshold", "W_dec", "b_dec"):
        np.testing.assert_array_equal(getattr(back, k), getattr(sae, k))
        assert getattr(back, k).dtype == np.float32
    assert (back.d_model, back.d_sae) == (D_MODEL, D_SAE)
    assert back.source == str(path)


def test_load_npz_casts_other_float_types_to_float32(tmp_path):
    arrays = {k: v.astype(np.float16) for k, v in good_arrays().items()}
    back = load_npz(write_npz(tmp_path / "p.npz", **arrays))
    assert back.W_enc.dtype == np.float32
    np.testing.assert_array_equal(back.W_enc, arrays["W_enc"].astype(np.float32))


def test_missing_keys_are_named(tmp_path):
    arrays = good_arrays()
    del arrays["threshold"], arrays["b_dec"]
    with pytest.raises(SAEError) as exc:
        load_npz(write_npz(tmp_path / "p.npz", **arrays))
    msg = str(exc.value)
    assert "threshold" in msg and "b_dec" in msg
    assert "W_enc" in msg  # what the file does have


@pytest.mark.parametrize(
    "key, bad_shape, expected",
    [
        ("b_enc", (D_SAE + 1,), (D_SAE,)),
        ("threshold", (D_SAE - 2,), (D_SAE,)),
        ("W_dec", (D_MODEL, D_SAE), (D_SAE, D_MODEL)),
        ("b_dec", (D_MODEL + 3,), (D_MODEL,)),
    ],
)
def test_wrong_shapes_name_the_array_and_both_shapes(tmp_path, key, bad_shape, expected):
    arrays = good_arrays()
    arrays[key] = np.zeros(bad_shape, dtype=np.float32)
    with pytest.raises(SAEError) as exc:
        load_npz(write_npz(tmp_path / "p.npz", **arrays))
    msg = str(exc.value)
    assert key in msg
    assert str(bad_shape) in msg and str(expected) in msg


def test_one_dimensional_w_enc(tmp_path):
    arrays = good_arrays()
    arrays["W_enc"] = np.zeros(D_MODEL * D_SAE, dtype=np.float32)
    with pytest.raises(SAEError) as exc:
        load_npz(write_npz(tmp_path / "p.npz", **arrays))
    assert "W_enc" in str(exc.value) and "2-D" in str(exc.value) and str(D_MODEL * D_SAE) in str(exc.value)


def test_integer_dtype_is_refused(tmp_path):
    arrays = good_arrays()
    arrays["b_enc"] = np.zeros(D_SAE, dtype=np.int32)
    with pytest.raises(SAEError) as exc:
        load_npz(write_npz(tmp_path / "p.npz", **arrays))
    assert "b_enc" in str(exc.value) and "int32" in str(exc.value)


class _Unpickled:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code running on load)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    arrays = good_arrays()
    arrays["b_dec"] = np.array([_Unpickled(str(marker))] * D_MODEL, dtype=object)
    path = write_npz(tmp_path / "p.npz", **arrays)
    with pytest.raises(SAEError) as exc:
        load_npz(path)
    assert "b_dec" in str(exc.value) or "non-numeric" in str(exc.value)
    assert not marker.exists(), "loading an SAE must never unpickle"
    # the marker mechanism works: a pickle-allowing load would have created it
    with np.load(path, allow_pickle=True) as npz:
        npz["b_dec"]
    assert marker.exists()


def test_a_text_file_is_not_an_npz(tmp_path):
    path = tmp_path / "params.npz"
    path.write_text("this is not an archive")
    with pytest.raises(SAEError) as exc:
        load_npz(path)
    assert str(path) in str(exc.value) and ".npz" in str(exc.value)


def test_a_corrupt_zip_is_not_an_npz(tmp_path):
    path = tmp_path / "params.npz"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(SAEError, match="not a readable .npz"):
        load_npz(path)


def test_a_single_npy_array_is_not_an_npz(tmp_path):
    # np.load returns a bare ndarray for a .npy file: that must be a clear SAEError, not a TypeError
    path = tmp_path / "params.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((D_MODEL, D_SAE), np.float32))
    with pytest.raises(SAEError) as exc:
        load_npz(path)
    assert str(path) in str(exc.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "params.npz"
    with pytest.raises(SAEError) as exc:
        load_npz(path)
    assert "not found" in str(exc.value) and str(path) in str(exc.value)


# ------------------------------------------------------------------------------------------- model fit
def test_check_model_accepts_a_fitting_model():
    make_sae().check_model(d_model=D_MODEL, n_layers=4, layer=3)
    make_sae().check_model(d_model=D_MODEL, n_layers=4, layer=0)


def test_check_model_d_model_mismatch_names_both_numbers():
    with pytest.raises(SAEError) as exc:
        make_sae(d_model=6).check_model(d_model=2304, n_layers=26, layer=20)
    assert re.search(r"\b6\b", str(exc.value)) and "2304" in str(exc.value)


@pytest.mark.parametrize("layer", [26, 40, -1])
def test_check_model_layer_out_of_range_names_layer_and_depth(layer):
    with pytest.raises(SAEError) as exc:
        make_sae().check_model(d_model=D_MODEL, n_layers=26, layer=layer)
    assert str(layer) in str(exc.value) and "26" in str(exc.value)


# ------------------------------------------------------------------------------------------- locate
def test_locate_local_file(tmp_path):
    path = tmp_path / "my_sae.npz"
    save_npz(path, make_sae())
    loc = locate("ignored/repo", "ignored.npz", str(path))
    assert (loc.format, loc.weights, loc.config) == ("gemma-scope", path, None)


def test_locate_directory_holding_params_npz(tmp_path):
    save_npz(tmp_path / "params.npz", make_sae())
    assert locate(None, None, str(tmp_path)).weights == tmp_path / "params.npz"


def test_locate_directory_without_an_sae(tmp_path):
    with pytest.raises(SAEError) as exc:
        locate(None, None, str(tmp_path))
    assert f"no SAE in {tmp_path}" in str(exc.value) and "params.npz" in str(exc.value)


def test_locate_missing_path(tmp_path):
    missing = tmp_path / "missing.npz"
    with pytest.raises(SAEError) as exc:
        locate("repo/id", "params.npz", str(missing))
    assert "not found" in str(exc.value) and str(missing) in str(exc.value)


def test_locate_without_any_source_says_what_to_pass():
    with pytest.raises(SAEError) as exc:
        locate(None, None, None)
    assert "--sae-local-path" in str(exc.value)
