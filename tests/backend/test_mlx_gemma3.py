"""Gemma-3 on the MLX backend, held to transformers' ``Gemma3ForCausalLM`` (full recompute, float32) past the window.

The tiny Gemma-3 checkpoint has q/k norms, globals at layers 2 and 5 (pattern 3), a 16-token window, linear RoPE
scaling (factor 8) on the global layers and a ``query_pre_attn_scalar`` that is not the head size, so a wrong
layer pattern, RoPE base or scale, norm, mask or attention scale shows in the hidden states. Every path the
backend serves is checked: the cached solo step (whole and chunked prefill), the batched step, steering, logprobs,
the corpus pass and a feature's page.
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (Linux: pip install 'mlx[cpu]')")
pytest.importorskip("mlx_lm", reason="mlx-lm is not installed")
torch = pytest.importorskip("torch", reason="torch is not installed: no reference to compare with")
transformers = pytest.importorskip("transformers")

from neuroscope.calibration import corpus_pass  # noqa: E402
from neuroscope.core.decode import generate  # noqa: E402
from neuroscope.core.protocol import GenerationParams, SteerFeature, Steering  # noqa: E402
from neuroscope.core.records import features  # noqa: E402
from tests.backend.test_batching import Collect, assert_same, run_batched, solo  # noqa: E402
from tests.support import explore as ref  # noqa: E402
from tests.support.reference import (  # noqa: E402
    assert_topk_matches,
    hf_model,
    load_backend,
    reference_acts,
    steered_greedy,
)

_VERSION = tuple(int(p) for p in transformers.__version__.split(".")[:2])
pytestmark = pytest.mark.skipif(_VERSION < (4, 50), reason=f"transformers {transformers.__version__} has no "
                                "Gemma-3 to compare with (added in 4.50)")

K = 16
N = 48
LONG_TEXT = ("The river bends around the old mill where the village keeps its grain. In spring the water rises and "
             "the children watch the wheel turn faster.")
WINDOW = 16


@pytest.fixture(scope="module")
def loaded(tiny_gemma3_fixture):
    backend, info, sae = load_backend("mlx", tiny_gemma3_fixture, top_k=K)
    yield backend, info, sae
    backend.close()


def _chat(tokenizer, text: str) -> list[int]:
    s = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(s, add_special_tokens=False)


@pytest.fixture(scope="module")
def prompts(loaded):
    tok = loaded[1].tokenizer
    out = [_chat(tok, t) for t in (LONG_TEXT, "Hi", "One two three four five six")]
    assert len(out[0]) > WINDOW > len(out[1]), "a prompt longer than the window and one shorter"
    return out


def _reference(fx, ids: list[int]):
    """transformers' logits (n, vocab) and block ``fx.sae_layer``'s output (n, d) of one uncached forward."""
    with torch.inference_mode():
        out = hf_model(str(fx.model_dir))(torch.tensor([ids]), output_hidden_states=True)
    return out.logits[0].float().numpy(), out.hidden_states[fx.sae_layer + 1][0].float().numpy()


def assert_steps_match_transformers(fx, sae, steps, prompt: list[int], *, logprobs: bool = False):
    """Greedy tokens are transformers' argmax over the whole sequence (a full recompute), and every step's
    features (prompt positions included) are the numpy SAE's top-k of transformers' residual."""
    gen = [s for s in steps if not s.prompt]
    seq = prompt + [s.token_id for s in gen]
    logits, hidden = _reference(fx, seq)
    want = logits[len(prompt) - 1: len(seq) - 1].argmax(-1)
    assert [s.token_id for s in gen] == want.tolist()
    acts = reference_acts(sae, hidden)
    for s in steps:
        assert_topk_matches(s, acts[s.position], K)
    if logprobs:
        lp = torch.log_softmax(torch.from_numpy(logits[len(prompt) - 1: len(seq) - 1]), -1).numpy()
        for i, s in enumerate(gen):
            assert s.logprob == pytest.approx(float(lp[i, s.token_id]), rel=1e-4, abs=1e-5)
            assert [t for t, _ in s.top_logprobs] == np.argsort(-lp[i])[: len(s.top_logprobs)].tolist()
    return seq


@pytest.mark.parametrize("prefill_chunk", [2048, 7], ids=["one-chunk", "chunk-7"])
def test_solo_steps_equal_transformers_past_the_window(loaded, prompts, tiny_gemma3_fixture, prefill_chunk):
    backend, _, sae = loaded
    backend.prefill_chunk = prefill_chunk
    try:
        steps = list(generate(backend, prompts[0], GenerationParams(max_tokens=N, prompt_features=True, logprobs=2)))
    finally:
        backend.prefill_chunk = 2048
    assert sum(s.prompt for s in steps) == len(prompts[0]) and len(steps) == len(prompts[0]) + N
    seq = assert_steps_match_transformers(tiny_gemma3_fixture, sae, steps, prompts[0], logprobs=True)
    assert len(seq) > 3 * WINDOW and len(set(seq[len(prompts[0]):])) > 10  # varied text, well past the window
    assert np.mean([s.l0 for s in steps]) > 3  # the SAE fires


def test_cached_block_output_and_logits_equal_transformers(loaded, tiny_gemma3_fixture):
    """The model module alone: a prefill, then one token at a time and chunks of 5 (the rotating caches wrap
    mid-chunk), block N's output and the logits at every position against one uncached forward (1e-4)."""
    backend, _, _ = loaded
    model, layer = backend.model, tiny_gemma3_fixture.sae_layer
    ids = np.random.default_rng(3).integers(6, 500, size=80).tolist()
    logits_ref, hidden_ref = _reference(tiny_gemma3_fixture, ids)
    cache, got_h, got_l, at = model.make_cache(), [], [], 0
    for size in [9] + [1] * 20 + [5] * 6 + [1] * 21:
        logits, h = model(mx.array([ids[at: at + size]]), cache, capture_layer=layer)
        got_h.append(np.array(h[0]))
        got_l.append(np.array(logits[0]))
        at += size
    assert at == len(ids)
    for got, want in ((np.concatenate(got_h), hidden_ref), (np.concatenate(got_l), logits_ref)):
        err = np.abs(got - want).max(axis=-1) / np.abs(want).max()
        assert err.max() < 1e-4, (int(err.argmax()), float(err.max()))


def test_batched_rows_equal_their_solo_runs_and_transformers(loaded, prompts, tiny_gemma3_fixture):
    """Rows of different lengths (one past the window from its prompt), one joining mid-way, one steered only on
    its generated positions, one with logprobs: each equals its solo run, and the unsteered ones transformers."""
    backend, _, sae = loaded
    late = Steering((SteerFeature(7, "add", 6.0),), positions="generated")
    reqs = [Collect(prompts[0], GenerationParams(max_tokens=30, prompt_features=True)),
            Collect(prompts[1], GenerationParams(max_tokens=40, logprobs=2)),
            Collect(prompts[2], GenerationParams(max_tokens=24, steering=late), join_at=6),
            Collect(prompts[1], GenerationParams(max_tokens=20), join_at=11)]
    sizes = run_batched(backend, reqs, max_batch=4, max_context=128)
    assert max(sizes) >= 3, "requests should have decoded together"
    for r in reqs:
        assert_same(r.steps, solo(backend, r))
    for r in (reqs[0], reqs[1], reqs[3]):
        assert_steps_match_transformers(tiny_gemma3_fixture, sae, r.steps, r.prompt_ids)
    plain = solo(backend, Collect(prompts[2], GenerationParams(max_tokens=24)))
    assert [s.token_id for s in reqs[2].steps] != [s.token_id for s in plain], "the steering should change tokens"


def _firing(steps, n: int) -> list[int]:
    counts = np.bincount(np.concatenate([s.feature_ids for s in steps]), minlength=256)
    return np.argsort(-counts)[:n].tolist()


def test_steering_equals_the_transformers_reference(loaded, prompts, tiny_gemma3_fixture):
    backend, _, sae = loaded
    fx, prompt = tiny_gemma3_fixture, prompts[0]
    plain = list(generate(backend, prompt, GenerationParams(max_tokens=N, prompt_features=True)))
    a, b, c = _firing(plain, 3)  # features that fire often on this text, so clamping and ablating act
    spec = [(a, "clamp", 2.0), (b, "ablate", None), (c, "add", 5.0)]
    steering = Steering(tuple(SteerFeature(i, m, 0.0 if v is None else v) for i, m, v in spec), "all")
    steps = list(generate(backend, prompt, GenerationParams(max_tokens=N, prompt_features=True, steering=steering)))
    tokens, resid = steered_greedy(fx.model_dir, sae, fx.sae_layer, prompt, spec, "all", N)
    assert [s.token_id for s in steps if not s.prompt] == tokens
    assert tokens != [s.token_id for s in plain if not s.prompt], "the steering should change the text"
    acts = reference_acts(sae, resid)
    for s in steps:
        assert_topk_matches(s, acts[s.position], K)


def test_corpus_pass_equals_numpy_on_transformers_residuals(loaded, tiny_gemma3_fixture):
    backend, info, sae = loaded
    tok = info.tokenizer
    samples = [corpus_pass.tokenize(tok, t, 40) for t in (LONG_TEXT, "The cat sat.", "Paris and Berlin are cities.")]
    assert max(len(s) for s in samples) == 40 > WINDOW
    special = corpus_pass.special_ids(tok)
    res = corpus_pass.run_batch(backend, samples, special, corpus_pass.pad_id(tok), records=True)
    rows = []
    for ids, recs in zip(samples, res.records):
        acts = reference_acts(sae, _reference(tiny_gemma3_fixture, ids)[1])
        for j, rec in enumerate(recs):
            f = features(rec)
            assert f.l0 == int((acts[j] > 0).sum()), j
            np.testing.assert_allclose(f.values, np.sort(acts[j])[::-1][: len(f.values)], rtol=1e-4, atol=1e-5)
        rows.append(acts[[j for j, t in enumerate(ids) if j > 0 and t not in special]].astype(np.float64))
    a = np.concatenate(rows)
    fired = a > 0
    mean = a.sum(0) / np.maximum(fired.sum(0), 1)
    st = res.stats
    assert st.tokens == len(a)
    np.testing.assert_array_equal(st.count, fired.sum(0))
    np.testing.assert_allclose(st.sum, a.sum(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(st.m2, (np.where(fired, a - mean, 0.0) ** 2).sum(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(st.max, a.max(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("index", [0, 17, 255])
def test_feature_effects_equal_numpy(loaded, tiny_gemma3_fixture, index):
    """Gemma-3's final norm (1 + w) and tied unembedding, no soft-capping, from the checkpoint's own files."""
    backend = loaded[0]
    unembed, scale, W_dec = ref.checkpoint_tensors(tiny_gemma3_fixture)
    eff = backend.feature_effects(index, neighbours=8, logits=8)
    ids, cos = ref.neighbours(W_dec, index, 8)
    assert eff.neighbour_ids.tolist() == ids
    np.testing.assert_allclose(eff.neighbour_cosines, cos, rtol=1e-4, atol=1e-5)
    pos, pos_v, neg, neg_v = ref.logits(unembed, scale, W_dec, index, 8)
    assert (eff.positive_ids.tolist(), eff.negative_ids.tolist()) == (pos, neg)
    np.testing.assert_allclose(eff.positive_values, pos_v, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eff.negative_values, neg_v, rtol=1e-4, atol=1e-5)
