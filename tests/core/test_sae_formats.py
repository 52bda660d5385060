"""SAE formats told apart by their files: Gemma Scope params.npz, Gemma Scope 2 and SAELens directories. The
writers round-trip; every malformed or refused SAE is one line naming the file and what is wrong; the layer comes
from the SAE's config; the reference encoders of relu and topk match a hand computation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from neuroscope.core import safetensors_np, sae_formats
from neuroscope.core.sae import SAEError, SAEWeights, encode_reference, save_npz
from neuroscope.core.sae_formats import GEMMA_SCOPE, GEMMA_SCOPE_2, SAELENS, detect, load, resolve_layer
from neuroscope.core.sae_writers import write_gemma_scope_2, write_sae, write_saelens

D_MODEL, D_SAE = 6, 10


def make_sae(**meta) -> SAEWeights:
    rng = np.random.default_rng(7)
    return SAEWeights(rng.standard_normal((D_MODEL, D_SAE)).astype(np.float32),
                      (rng.standard_normal(D_SAE) * 0.1).astype(np.float32),
                      np.abs(rng.standard_normal(D_SAE)).astype(np.float32) * 0.5,
                      rng.standard_normal((D_SAE, D_MODEL)).astype(np.float32),
                      rng.standard_normal(D_MODEL).astype(np.float32), source="test", **meta)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("fmt", [GEMMA_SCOPE, GEMMA_SCOPE_2, SAELENS])
def test_each_writer_round_trips_and_is_detected_by_its_files(tmp_path, fmt):
    sae = make_sae()
    where = write_sae(tmp_path / "any-name", sae, fmt, layer=4)
    for given in (where, tmp_path / "any-name"):  # the file or its directory
        loc = detect(given)
        assert loc.format == fmt
        got = load(loc)
        for k in ("W_enc", "b_enc", "threshold", "W_dec", "b_dec"):
            np.testing.assert_array_equal(getattr(got, k), getattr(sae, k))
        assert got.format == fmt and got.architecture == "jumprelu"
        assert got.layer == (None if fmt == GEMMA_SCOPE else 4)
        assert sae_formats.shape(loc) == (D_MODEL, D_SAE)


@pytest.mark.parametrize("arch,k,in_kwargs", [("relu", None, False), ("topk", 3, False), ("topk", 4, True),
                                              ("jumprelu", None, False)])
def test_saelens_architectures_round_trip(tmp_path, arch, k, in_kwargs):
    sae = make_sae(architecture=arch, k=k, apply_b_dec_to_input=True)
    if arch != "jumprelu":
        sae = dataclasses.replace(sae, threshold=np.zeros(D_SAE, np.float32))
    write_saelens(tmp_path / "s", sae, layer=2, k_in_kwargs=in_kwargs)
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert ("threshold" in safetensors_np.shapes(tmp_path / "s" / "sae_weights.safetensors")) == (arch == "jumprelu")
    assert cfg["architecture"] == {"relu": "standard"}.get(arch, arch)
    got = load(detect(tmp_path / "s"))
    assert (got.architecture, got.k, got.apply_b_dec_to_input, got.layer) == (arch, k, True, 2)
    x = np.random.default_rng(1).standard_normal((4, D_MODEL)).astype(np.float32)
    np.testing.assert_array_equal(encode_reference(got, x), encode_reference(sae, x))


def test_a_bf16_safetensors_file_widens_exactly(tmp_path):
    import struct

    vals = np.array([1.5, -2.25, 3.0e-3], dtype=np.float32)
    bits = (vals.view(np.uint32) >> 16).astype("<u2")  # truncated to bf16 (1.5 and -2.25 are exact)
    header = json.dumps({"t": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bits.tobytes())
    got = safetensors_np.load(tmp_path / "x.safetensors")["t"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, (bits.astype(np.uint32) << 16).view(np.float32))
    assert got[0] == 1.5 and got[1] == -2.25


# ------------------------------------------------------------------------------------------------ references
def hand_encode(sae: SAEWeights, x: np.ndarray) -> np.ndarray:
    """Loops in float64: x' = x * scale - b_dec (when asked); pre = x' W + b; relu, jumprelu or the top k."""
    out = np.zeros((x.shape[0], sae.d_sae))
    for r, row in enumerate(x.astype(np.float64)):
        row = row * (sae.input_scale or 1.0)
        if sae.apply_b_dec_to_input:
            row = row - sae.b_dec
        pre = [sum(row[i] * float(sae.W_enc[i, j]) for i in range(sae.d_model)) + float(sae.b_enc[j])
               for j in range(sae.d_sae)]
        if sae.architecture == "topk":
            keep = sorted(range(sae.d_sae), key=lambda j: -pre[j])[: sae.k]
            out[r] = [max(pre[j], 0.0) if j in keep else 0.0 for j in range(sae.d_sae)]
        elif sae.architecture == "relu":
            out[r] = [max(p, 0.0) for p in pre]
        else:
            out[r] = [p if p > t else 0.0 for p, t in zip(pre, sae.threshold)]
    return out


@pytest.mark.parametrize("arch,k", [("jumprelu", None), ("relu", None), ("topk", 3)])
@pytest.mark.parametrize("b_dec,scale", [(False, None), (True, 0.7)])
def test_reference_encoder_of_each_architecture_matches_a_hand_computation(arch, k, b_dec, scale):
    sae = make_sae(architecture=arch, k=k, apply_b_dec_to_input=b_dec, input_scale=scale)
    x = np.random.default_rng(3).standard_normal((5, D_MODEL)).astype(np.float32) * 2
    got = encode_reference(sae, x)
    np.testing.assert_allclose(got, hand_encode(sae, x), rtol=1e-5, atol=1e-5)
    if arch == "topk":
        assert ((got > 0).sum(-1) <= k).all()


def test_a_params_npz_holds_plain_jumprelu_only(tmp_path):
    with pytest.raises(ValueError, match="topk"):
        save_npz(tmp_path / "p.npz", make_sae(architecture="topk", k=2))


def test_bad_sae_metadata_is_refused():
    with pytest.raises(SAEError, match="unknown SAE architecture 'gated'"):
        make_sae(architecture="gated")
    with pytest.raises(SAEError, match="k between 1 and d_sae=10"):
        make_sae(architecture="topk", k=11)


# ------------------------------------------------------------------------------------------------ refusals
def gs2(tmp_path, **cfg):
    extra_tensors = cfg.pop("extra_tensors", None)
    return write_gemma_scope_2(tmp_path / "gs2", make_sae(), layer=5, extra_config=cfg, extra_tensors=extra_tensors)


@pytest.mark.parametrize("cfg,needle", [
    ({"type": "transcoder"}, "is a transcoder"),
    ({"hf_hook_point_out": "model.layers.5.post_feedforward_layernorm.output"}, "is a transcoder"),
    ({"type": "crosscoder"}, "is a crosscoder"),
    ({"hf_hook_point_in": ["model.layers.5.output", "model.layers.9.output"]}, "is a crosscoder"),
    ({"affine_connection": True}, "affine skip connection"),
    ({"extra_tensors": {"affine_skip_connection": np.eye(D_MODEL, dtype=np.float32)}}, "affine skip connection"),
    ({"hf_hook_point_in": "model.layers.5.self_attn.o_proj.input",
      "hf_hook_point_out": "model.layers.5.self_attn.o_proj.input"}, "attention-output SAE"),
    ({"hf_hook_point_in": "model.layers.5.post_feedforward_layernorm.output",
      "hf_hook_point_out": "model.layers.5.post_feedforward_layernorm.output"}, "MLP SAE"),
    ({"architecture": "topk"}, "unknown architecture 'topk'"),
    ({"type": "probe"}, "unknown type 'probe'"),
])
def test_gemma_scope_2_refusals_are_one_line_naming_what_it_is(tmp_path, cfg, needle):
    d = gs2(tmp_path, **cfg)
    with pytest.raises(SAEError) as exc:
        load(detect(d))
    msg = one_line(exc)
    assert needle in msg and str(d) in msg


def test_gemma_scope_2_real_key_names_and_layer(tmp_path):
    d = gs2(tmp_path)
    assert set(safetensors_np.shapes(d / "params.safetensors")) == {"w_enc", "w_dec", "b_enc", "b_dec", "threshold"}
    assert safetensors_np.shapes(d / "params.safetensors")["w_enc"] == (D_MODEL, D_SAE)
    assert load(detect(d)).layer == 5
    cfg = json.loads((d / "config.json").read_text())
    cfg["hf_hook_point_in"] = cfg["hf_hook_point_out"] = "model.language_model.layers.7.output"
    (d / "config.json").write_text(json.dumps(cfg))
    assert load(detect(d)).layer == 7


def saelens(tmp_path, arch="jumprelu", k=None, **cfg):
    sae = make_sae(architecture=arch, k=k)
    return write_saelens(tmp_path / "sl", sae, layer=3, extra_config=cfg)


@pytest.mark.parametrize("cfg,needle", [
    ({"hook_name": "blocks.3.hook_mlp_out"}, "MLP SAE (hook blocks.3.hook_mlp_out)"),
    ({"hook_name": "blocks.3.attn.hook_z"}, "attention-output SAE"),
    ({"hook_name": "blocks.3.hook_resid_pre"}, "not resid_post"),
    ({"hook_name": None}, "lacks hook_name"),
    ({"hook_layer": 4}, "hook_layer 4 disagrees with hook_name blocks.3.hook_resid_post"),
    ({"architecture": "gated"}, "unknown architecture 'gated'"),
    ({"architecture": "topk"}, "a topk SAE needs a positive integer k"),
    ({"architecture": "standard", "activation_fn": "tanh-relu"}, "activation function 'tanh-relu'"),
    ({"normalize_activations": "layer_norm"}, "normalize_activations 'layer_norm' is not supported"),
    ({"normalize_activations": "expected_average_only_in"}, "needs the scaling factor"),
    ({"d_in": 7}, "says d_in=7 but"),
    ({"d_sae": 12}, "says d_sae=12 but"),
])
def test_saelens_refusals_are_one_line_naming_the_field(tmp_path, cfg, needle):
    d = saelens(tmp_path, **cfg)
    with pytest.raises(SAEError) as exc:
        load(detect(d))
    msg = one_line(exc)
    assert needle in msg and str(d / "cfg.json") in msg


def test_saelens_v6_metadata_and_expected_average_scale(tmp_path):
    d = saelens(tmp_path, hook_name=None, hook_layer=None, metadata={"hook_name": "blocks.6.hook_resid_post"},
                normalize_activations="expected_average_only_in", norm_scaling_factor=2.5)
    got = load(detect(d))
    assert (got.layer, got.input_scale) == (6, 2.5)


def test_older_saelens_topk_as_standard_with_a_topk_activation(tmp_path):
    d = saelens(tmp_path, architecture="standard", activation_fn_str="topk", activation_fn_kwargs={"k": 2})
    got = load(detect(d))
    assert (got.architecture, got.k) == ("topk", 2)


@pytest.mark.parametrize("fmt,missing", [(GEMMA_SCOPE_2, "config.json"), (SAELENS, "sae_weights.safetensors")])
def test_a_directory_missing_one_of_its_files(tmp_path, fmt, missing):
    d = write_sae(tmp_path / "d", make_sae(), fmt, layer=1)
    (d / missing).unlink()
    with pytest.raises(SAEError, match=f"lacks {missing}") as exc:
        detect(d)
    one_line(exc)


def test_malformed_files_name_the_file_and_the_fault(tmp_path):
    d = saelens(tmp_path)
    (d / "cfg.json").write_text("{not json")
    with pytest.raises(SAEError, match="is not readable JSON") as exc:
        load(detect(d))
    assert str(d / "cfg.json") in one_line(exc)

    d = gs2(tmp_path)
    safetensors_np.save(d / "params.safetensors", {"w_enc": np.zeros((D_MODEL, D_SAE)), "b_enc": np.zeros(D_SAE)})
    with pytest.raises(SAEError, match="lacks threshold, w_dec, b_dec") as exc:
        load(detect(d))
    assert str(d / "params.safetensors") in one_line(exc)

    safetensors_np.save(d / "params.safetensors", {"w_enc": np.zeros((D_MODEL, D_SAE)), "b_enc": np.zeros(D_SAE),
                                                   "threshold": np.zeros(D_SAE), "w_dec": np.zeros((D_SAE, 3)),
                                                   "b_dec": np.zeros(D_MODEL)})
    with pytest.raises(SAEError, match=r"W_dec has shape \(10, 3\) but W_enc \(6, 10\) implies \(10, 6\)") as exc:
        load(detect(d))
    one_line(exc)

    (d / "params.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(SAEError, match="is not a safetensors file") as exc:
        load(detect(d))
    one_line(exc)


def test_an_unknown_directory_or_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SAEError, match="no SAE in .* it holds notes.txt") as exc:
        detect(tmp_path)
    one_line(exc)
    with pytest.raises(SAEError, match="neither a params.npz archive"):
        detect(tmp_path / "notes.txt")
    with pytest.raises(SAEError, match="SAE file not found"):
        detect(tmp_path / "absent")


# ------------------------------------------------------------------------------------------------ layer
def test_layer_resolution():
    assert resolve_layer(None, 7) == 7
    assert resolve_layer(7, 7) == 7
    with pytest.raises(SAEError) as exc:
        resolve_layer(3, 7, source="SAE x")
    assert "--sae-layer 3 disagrees with SAE x, which was trained on layer 7" in one_line(exc)
    assert resolve_layer(None, None, hub_path="layer_12/width_16k/average_l0_82/params.npz") == 12
    assert resolve_layer(5, None, hub_path="layer_12/width_16k/average_l0_82/params.npz") == 5
    assert resolve_layer(None, None, hub_path="res/w16k/params.npz") == sae_formats.DEFAULT_LAYER == 20
    assert resolve_layer(None, None) == 20
