"""Gemma-3 on the torch backend (eager engine), on the tiny Gemma-3 checkpoint: six layers, globals at 2 and 5, a
16-token window (shorter than these sequences), linear RoPE scaling on the globals, q/k norms, no soft-capping.

Against transformers' ``Gemma3ForCausalLM`` recomputing the whole sequence (needs transformers >= 4.50; the
floor of the supported range has no Gemma-3, and those tests skip there): the model's prefill and every cached
step, greedy tokens and block-N features through the backend, steering, logprobs, the corpus pass. Without
transformers' Gemma-3: the multimodal checkpoint serves exactly what the text checkpoint serves (its vision
tower never read), sparse and transformers-5 configs read right, the feature page from the weights, and an
unsupported ``model_type`` is one line naming the families.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backends.torch_gemma3 import Gemma3, Gemma3Config  # noqa: E402
from neuroscope.calibration import corpus_pass  # noqa: E402
from neuroscope.core import checkpoint, fixtures_gemma3  # noqa: E402
from neuroscope.core.decode import generate  # noqa: E402
from neuroscope.core.protocol import (  # noqa: E402
    BackendError,
    FeatureFilter,
    GenerationParams,
    ModelSpec,
    SteerFeature,
    Steering,
)
from neuroscope.core.sae import load_npz  # noqa: E402
from tests.support import explore as explore_ref  # noqa: E402
from tests.support.reference import (  # noqa: E402
    assert_topk_matches,
    greedy_full_recompute,
    hf_model,
    load_backend,
    reference_acts,
    residuals,
    steered_greedy,
)

K = 8
TOL = 1e-4


def _hf_has_gemma3() -> bool:
    import transformers

    return hasattr(transformers, "Gemma3ForCausalLM")


needs_hf_gemma3 = pytest.mark.skipif(
    not _hf_has_gemma3(), reason="the reference is transformers' Gemma3ForCausalLM: needs transformers >= 4.50")


@pytest.fixture(scope="module")
def fx(tiny_gemma3_fixture):
    return tiny_gemma3_fixture


@pytest.fixture(scope="module")
def loaded(fx):
    backend, info, sae = load_backend("torch-cpu", fx, top_k=K)
    yield backend, info, sae
    backend.close()


@pytest.fixture(scope="module")
def prompt_ids(loaded):
    tok = loaded[1].tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France? Tell me about the "
                                                                "river and the mill."}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > 16, "the prompt must be longer than the sliding window"
    return ids


def _run(backend, ids, **kw):
    kw.setdefault("max_tokens", 40)
    return list(generate(backend, ids, GenerationParams(**kw)))



# ------------------------------------------------------------------------------------------------ the model
@pytest.fixture(scope="module")
def model(fx):
    return Gemma3.from_checkpoint(fx.model_dir, checkpoint.read_config(fx.model_dir), torch.float32,
                                  torch.device("cpu"))


@needs_hf_gemma3
@pytest.mark.parametrize("chunk", [2048, 7], ids=["one-chunk", "chunk-7"])
def test_prefill_equals_transformers(model, fx, chunk):
    ids = np.random.default_rng(3).integers(10, 500, 40).tolist()
    with torch.inference_mode():
        logits, hidden = model.prefill(torch.tensor(ids), model.new_cache(256), capture=fx.sae_layer,
                                       all_positions=True, chunk=chunk)
        out = hf_model(str(fx.model_dir))(torch.tensor([ids]), output_hidden_states=True)
    torch.testing.assert_close(hidden, out.hidden_states[fx.sae_layer + 1][0], rtol=TOL, atol=TOL)
    torch.testing.assert_close(logits[0], out.logits[0, -1], rtol=TOL, atol=TOL)


@needs_hf_gemma3
def test_every_cached_step_equals_a_full_recompute(model, fx):
    """From a prompt shorter than the window to 2.5 windows: every local layer's window slides, every global
    layer's scaled RoPE reaches positions the prompt did not."""
    seq = np.random.default_rng(5).integers(10, 500, 10).tolist()
    cache = model.new_cache(256)
    ref = hf_model(str(fx.model_dir))
    with torch.inference_mode():
        logits, _ = model.prefill(torch.tensor(seq), cache, capture=fx.sae_layer, all_positions=False)
        for _ in range(30):
            token = logits.argmax(-1)
            seq.append(int(token))
            logits, hidden = model.step(token, torch.tensor([len(seq) - 1]), cache, capture=fx.sae_layer)
            out = ref(torch.tensor([seq]), output_hidden_states=True)
            torch.testing.assert_close(logits[0], out.logits[0, -1], rtol=TOL, atol=TOL)
            torch.testing.assert_close(hidden[0], out.hidden_states[fx.sae_layer + 1][0, -1], rtol=TOL, atol=TOL)
    assert len(seq) > 2 * model.cfg.sliding_window


@needs_hf_gemma3
def test_bfloat16_matches_transformers_in_bfloat16(fx):
    bf16 = Gemma3.from_checkpoint(fx.model_dir, checkpoint.read_config(fx.model_dir), torch.bfloat16,
                                  torch.device("cpu"))
    ids = np.random.default_rng(4).integers(10, 500, 30).tolist()
    with torch.inference_mode():
        logits, _ = bf16.prefill(torch.tensor(ids), bf16.new_cache(256), capture=None, all_positions=False)
        ref = hf_model(str(fx.model_dir), "bfloat16")(torch.tensor([ids])).logits[0, -1].float()
    torch.testing.assert_close(logits[0].float(), ref, rtol=2e-2, atol=2e-2)
    assert int(logits.argmax()) == int(ref.argmax())


def test_what_differs_from_gemma2_is_read_from_the_checkpoint(model):
    cfg = model.cfg
    assert [model.layers[i].sliding for i in range(6)] == [True, True, False, True, True, False]
    assert cfg.attn_logit_softcapping is None and cfg.final_logit_softcapping is None
    assert cfg.query_pre_attn_scalar == 24 and model.layers[0].self_attn.scale == 24 ** -0.5
    assert (cfg.rope_theta, cfg.rope_scaling_factor, cfg.rope_local_base_freq) == (1e6, 8.0, 1e4)
    hd = cfg.head_dim
    base = 1.0 / (1e6 ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
    torch.testing.assert_close(model._inv_freq, base / 8.0)
    torch.testing.assert_close(model._inv_freq_local, 1.0 / (1e4 ** (torch.arange(0, hd, 2, dtype=torch.float) / hd)))
    assert model.layers[0].self_attn.q_norm.weight.abs().sum() > 0  # the checkpoint's q/k norms, not zeros


def test_a_local_query_sees_exactly_the_last_window_positions(model):
    glob, local = model.masks(torch.tensor([40]), torch.arange(64))
    assert torch.nonzero(local[0]).flatten().tolist() == list(range(40 - 16 + 1, 41))
    assert torch.nonzero(glob[0]).flatten().tolist() == list(range(41))


# ------------------------------------------------------------------------------------------------ the backend
@needs_hf_gemma3
def test_greedy_tokens_and_features_equal_transformers_and_numpy(loaded, prompt_ids, fx):
    backend, info, sae = loaded
    assert info.n_layers == 6 and info.sliding_window == 16
    steps = _run(backend, prompt_ids, max_tokens=32, prompt_features=True)
    prompt, gen = [s for s in steps if s.prompt], [s for s in steps if not s.prompt]
    assert [s.token_id for s in gen] == greedy_full_recompute(fx.model_dir, prompt_ids, 32)
    assert len({s.token_id for s in gen}) > 5, "the tiny model should produce varied tokens"
    full = prompt_ids + [s.token_id for s in gen]
    acts = reference_acts(sae, residuals(fx.model_dir, full, fx.sae_layer))
    for s in prompt + gen:
        assert_topk_matches(s, acts[s.position], K)
    assert np.mean([s.l0 for s in gen]) > K, "the fixture SAE should fire more than k features per token"


@needs_hf_gemma3
def test_logprobs_equal_transformers_log_softmax(loaded, prompt_ids, fx):
    backend = loaded[0]
    steps = _run(backend, prompt_ids, max_tokens=20, temperature=0.8, seed=7, logprobs=3)
    tokens = [s.token_id for s in steps]
    with torch.inference_mode():
        logits = hf_model(str(fx.model_dir))(torch.tensor([prompt_ids + tokens])).logits[0].double()
    n = len(prompt_ids)
    want = torch.log_softmax(logits[n - 1: n - 1 + len(tokens)], dim=-1).numpy()
    for i, s in enumerate(steps):
        assert s.logprob == pytest.approx(want[i, s.token_id], abs=1e-4)
        assert [t for t, _ in s.top_logprobs] == np.argsort(-want[i], kind="stable")[:3].tolist()


@needs_hf_gemma3
@pytest.mark.parametrize("positions", ["all", "generated"])
def test_steering_equals_the_transformers_reference(loaded, prompt_ids, fx, positions):
    """Add, clamp and ablate on features that fire on this prompt (chosen from the unsteered run), decoded past
    the window, against transformers' Gemma-3 with the steering rule applied in numpy by a hook on block N."""
    backend, _, sae = loaded
    plain = _run(backend, prompt_ids, max_tokens=40, prompt_features=True)
    fired = np.bincount(np.concatenate([s.feature_ids for s in plain]), minlength=sae.d_sae)
    top = np.argsort(-fired, kind="stable")[:3].tolist()
    rare = int(np.flatnonzero(fired == 0)[0])
    features = [(rare, "add", 6.0), (top[0], "clamp", 2.0), (top[1], "ablate", None), (top[2], "add", -3.0)]
    want_tokens, resid = steered_greedy(fx.model_dir, sae, fx.sae_layer, prompt_ids, features, positions, 40)
    acts = reference_acts(sae, resid)
    steering = Steering(tuple(SteerFeature(i, m, 0.0 if v is None else v) for i, m, v in features), positions)
    steps = _run(backend, prompt_ids, max_tokens=40, prompt_features=True, steering=steering)
    gen = [s for s in steps if not s.prompt]
    assert [s.token_id for s in gen] == want_tokens
    assert want_tokens != [s.token_id for s in plain if not s.prompt], "the steering changed nothing"
    for s in steps:
        assert_topk_matches(s, acts[s.position], K)


@needs_hf_gemma3
def test_corpus_pass_statistics_equal_numpy_on_transformers_residuals(loaded, fx):
    backend, info, sae = loaded
    tok = info.tokenizer
    texts = ["The river bends around the old mill where the village keeps its grain. In spring the water rises.",
             "Paris, Berlin and Tokyo are capitals.", "The cat sat."]
    samples = [corpus_pass.tokenize(tok, t, 40) for t in texts]
    assert max(len(s) for s in samples) > 16 and len({len(s) for s in samples}) == 3
    res = corpus_pass.run_batch(backend, samples, corpus_pass.special_ids(tok), corpus_pass.pad_id(tok),
                                records=True)
    special = set(tok.all_special_ids)
    rows = []
    for ids, recs in zip(samples, res.records):
        acts = reference_acts(sae, residuals(fx.model_dir, ids, fx.sae_layer)).astype(np.float64)
        assert len(recs) == len(ids)
        rows.append(acts[[j for j, t in enumerate(ids) if j > 0 and t not in special]])
    a = np.concatenate(rows)
    st = res.stats
    assert st.tokens == len(a)
    np.testing.assert_array_equal(st.count, (a > 0).sum(0))
    np.testing.assert_allclose(st.sum, a.sum(0), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(st.max, a.max(0), rtol=TOL, atol=1e-5)


def test_a_feature_filter_acts_before_top_k(loaded, prompt_ids):
    """Masked features leave the ranking (the next ones move up, k still shown), the text is unchanged."""
    backend, _, sae = loaded
    plain = _run(backend, prompt_ids, max_tokens=16)
    banned = {int(s.feature_ids[0]) for s in plain} | {int(s.feature_ids[2]) for s in plain}
    mask = np.ones(sae.d_sae, dtype=bool)
    mask[sorted(banned)] = False
    backend.set_feature_filter(FeatureFilter(mask=mask))
    try:
        got = _run(backend, prompt_ids, max_tokens=16)
    finally:
        backend.set_feature_filter(FeatureFilter())
    assert [s.token_id for s in got] == [s.token_id for s in plain]
    for g, p in zip(got, plain):
        kept = [int(i) for i in p.feature_ids if int(i) not in banned]
        assert g.feature_ids[: len(kept)].tolist() == kept and not banned & set(g.feature_ids.tolist())
        assert g.l0 == p.l0 and g.filtered >= len(p.feature_ids) - len(kept) > 0
        assert len(g.feature_ids) == min(K, g.l0 - g.filtered)


def test_feature_effects_equal_numpy_from_the_weights(loaded, fx):
    """The logit effect goes through Gemma-3's final norm (1 + w) and the tied unembedding, with no soft-cap."""
    backend = loaded[0]
    unembed, scale, W_dec = explore_ref.checkpoint_tensors(fx)
    for index in (0, 17, 200):
        eff = backend.feature_effects(index, neighbours=6, logits=6)
        ids, cos = explore_ref.neighbours(W_dec, index, 6)
        assert eff.neighbour_ids.tolist() == ids
        np.testing.assert_allclose(eff.neighbour_cosines, cos, rtol=1e-4, atol=1e-5)
        pos, pos_v, neg, neg_v = explore_ref.logits(unembed, scale, W_dec, index, 6)
        assert eff.positive_ids.tolist() == pos and eff.negative_ids.tolist() == neg
        np.testing.assert_allclose(eff.positive_values, pos_v, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(eff.negative_values, neg_v, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ checkpoints
@dataclasses.dataclass(frozen=True)
class _Fx:
    model_dir: object
    sae_path: object
    sae_layer: int


def _transformers5_layout(mm_dir, out_dir):
    """The multimodal twin as transformers 5 saves it: ``model.language_model.*``, ``model.vision_tower.*``,
    ``model.multi_modal_projector.*`` and a stored ``lm_head``."""
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(mm_dir, out_dir)
    w = load_file(str(mm_dir / "model.safetensors"))
    out = {}
    for k, v in w.items():
        out[("model.language_model." + k[len("language_model.model."):]) if k.startswith("language_model.model.")
            else "model." + k] = v
    out["lm_head.weight"] = w["language_model.model.embed_tokens.weight"]
    save_file(out, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


@pytest.fixture(scope="module")
def multimodal(fx, tmp_path_factory):
    return fixtures_gemma3.write_multimodal(fx.model_dir, tmp_path_factory.mktemp("mm") / "model", fx.shape)


@pytest.mark.parametrize("layout", ["hub", "transformers-5"])
def test_a_multimodal_checkpoint_serves_what_the_text_checkpoint_serves(loaded, prompt_ids, fx, multimodal, layout,
                                                                        tmp_path, monkeypatch):
    import safetensors

    model_dir = multimodal if layout == "hub" else _transformers5_layout(multimodal, tmp_path / "t5")
    read: list[str] = []
    real_open = safetensors.safe_open

    class Spy:  # records every tensor the loader reads
        def __init__(self, *a, **kw):
            self.f = real_open(*a, **kw)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def keys(self):
            return self.f.keys()

        def get_tensor(self, name):
            read.append(name)
            return self.f.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    backend, info, _ = load_backend("torch-cpu", _Fx(model_dir, fx.sae_path, fx.sae_layer), top_k=K)
    monkeypatch.undo()
    try:
        assert read and not [k for k in read if "vision" in k or "projector" in k or "lm_head" in k]
        assert info.vocab_size == loaded[1].vocab_size and info.n_layers == 6
        want = _run(loaded[0], prompt_ids, max_tokens=24, prompt_features=True)
        got = _run(backend, prompt_ids, max_tokens=24, prompt_features=True)
        assert [s.token_id for s in got] == [s.token_id for s in want]
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.feature_ids, b.feature_ids)
            np.testing.assert_allclose(a.feature_values, b.feature_values, rtol=1e-5)  # same weights, same ops
            assert a.l0 == b.l0
    finally:
        backend.close()


HUB_4B_TEXT_CONFIG = {  # google/gemma-3-4b-it's text_config as the hub spells it: only what differs from defaults
    "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024,
}


def test_a_sparse_text_config_takes_gemma3_text_defaults():
    cfg = Gemma3Config.from_dict({"model_type": "gemma3", "text_config": HUB_4B_TEXT_CONFIG, "vision_config": {}})
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.sliding_window) == (2560, 10240, 34,
                                                                                                    1024)
    assert (cfg.vocab_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (262208, 8, 4, 256)
    assert (cfg.query_pre_attn_scalar, cfg.rms_norm_eps, cfg.max_position_embeddings) == (256, 1e-6, 131072)
    assert (cfg.rope_theta, cfg.rope_scaling_factor, cfg.rope_local_base_freq, cfg.rope_local_scaling_factor) == (
        1e6, 8.0, 1e4, 1.0)
    assert cfg.attn_logit_softcapping is None and cfg.final_logit_softcapping is None
    assert [i for i in range(34) if not cfg.is_sliding(i)] == [5, 11, 17, 23, 29]  # pattern 6


@needs_hf_gemma3
def test_our_reading_agrees_with_transformers_config_classes():
    """transformers' own Gemma3Config fills the sparse text_config; its saved form (transformers 5: layer_types
    and rope_parameters per layer type) reads as the hub spelling does."""
    import transformers

    mm = {"model_type": "gemma3", "text_config": HUB_4B_TEXT_CONFIG}
    theirs = transformers.Gemma3Config(text_config=dict(HUB_4B_TEXT_CONFIG)).text_config
    ours = Gemma3Config.from_dict(mm)
    for name in ("vocab_size", "num_attention_heads", "num_key_value_heads", "head_dim", "query_pre_attn_scalar",
                 "rms_norm_eps", "max_position_embeddings", "sliding_window", "final_logit_softcapping",
                 "attn_logit_softcapping"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert list(ours.layer_types) == list(theirs.layer_types)
    saved = json.loads(json.dumps(theirs.to_dict()))
    assert Gemma3Config.from_dict(saved) == ours
    if "layer_types" in saved and "rope_parameters" in saved:  # transformers 5's spelling alone
        bare = {k: v for k, v in saved.items() if k not in ("rope_scaling", "rope_theta", "rope_local_base_freq",
                                                            "sliding_window_pattern")}
        assert Gemma3Config.from_dict(bare) == ours


def test_transformers5_rope_parameters_and_unsupported_rope_types():
    base = {"model_type": "gemma3_text", "num_hidden_layers": 4, "layer_types": ["sliding_attention",
                                                                                 "full_attention"] * 2}
    cfg = Gemma3Config.from_dict({**base, "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5e5},
        "sliding_attention": {"rope_type": "default", "rope_theta": 2e4}}})
    assert (cfg.rope_theta, cfg.rope_scaling_factor, cfg.rope_local_base_freq) == (5e5, 4.0, 2e4)
    assert [cfg.is_sliding(i) for i in range(4)] == [True, False, True, False]
    with pytest.raises(ValueError, match="RoPE type 'yarn'"):
        Gemma3Config.from_dict({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="bidirectional"):
        Gemma3Config.from_dict({**base, "use_bidirectional_attention": True})


def test_an_unsupported_model_type_is_one_line_naming_the_families(fx, tmp_path):
    import shutil

    model_dir = shutil.copytree(fx.model_dir, tmp_path / "llama")
    cfg = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    from neuroscope.core import registry

    backend = registry.resolve("torch-cpu")()
    with pytest.raises(BackendError) as err:
        backend.load(ModelSpec(str(model_dir)), load_npz(fx.sae_path), fx.sae_layer, top_k=K)
    msg = str(err.value)
    assert "\n" not in msg and "'llama'" in msg
    assert "Gemma 2 (gemma2)" in msg and "Gemma 3 (gemma3_text, gemma3)" in msg
