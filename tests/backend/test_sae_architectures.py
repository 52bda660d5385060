"""Every SAE architecture (JumpReLU with b_dec on the input and an input scale, ReLU, TopK) on every backend and
engine here — torch eager, torch compiled, MLX, alone and batched — against the numpy reference encoder over
transformers' own residuals; and steering (clamp, ablate) on a TopK and a ReLU SAE against the numpy steering
rule, where a TopK feature's activation is read from the full encode."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from neuroscope.core import registry
from neuroscope.core.decode import generate
from neuroscope.core.fixtures import random_sae
from neuroscope.core.protocol import GenerationParams, ModelSpec, SteerFeature, Steering
from neuroscope.core.sae import SAEWeights, encode_reference
from tests.backend.test_batching import Collect, check
from tests.support.reference import assert_topk_matches, reference_acts, steered_greedy

K = 8
N_TOKENS = 12
PROMPT = "What is the capital of France? Tell me about the river and the mill."
ARCHS = ("jumprelu-saelens", "relu", "topk")
CASES = [pytest.param((engine, arch), id=f"{engine}-{arch}",
                      marks=pytest.mark.skipif(engine.split(":")[0] not in registry.available(),
                                               reason=f"{engine} is not available"))
         for engine in ("torch-cpu", "torch-cpu:compiled", "mlx") for arch in ARCHS]


@functools.lru_cache(maxsize=None)
def arch_sae(d_model: int, d_sae: int, arch: str) -> SAEWeights:
    """A random SAE of each architecture sized to the tiny model, sparse enough on its raw residual."""
    base = random_sae(d_model, d_sae, seed=11)
    rng = np.random.default_rng(12)
    b_dec = (rng.standard_normal(d_model) * 0.5).astype(np.float32)
    zeros = np.zeros(d_sae, np.float32)
    if arch == "relu":  # a negative bias keeps roughly a tenth of the features firing
        return dataclasses.replace(base, b_enc=base.b_enc - 3.2, threshold=zeros, architecture="relu",
                                   apply_b_dec_to_input=True, b_dec=b_dec, format="saelens")
    if arch == "topk":
        return dataclasses.replace(base, threshold=zeros, architecture="topk", k=12, apply_b_dec_to_input=True,
                                   b_dec=b_dec, format="saelens")
    return dataclasses.replace(base, apply_b_dec_to_input=True, b_dec=b_dec, input_scale=1.3, format="saelens")


def test_encoders_equal_the_numpy_reference_on_random_inputs():
    import torch

    x = (np.random.default_rng(2).standard_normal((7, 64)) * 3).astype(np.float32)
    for arch in ARCHS:
        sae = arch_sae(64, 256, arch)
        want = encode_reference(sae, x)
        from backends.torch_sae import TorchSAE

        got = TorchSAE(sae, torch.device("cpu"), top_k=K).encode(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        if "mlx" in registry.available():
            import mlx.core as mx

            from backends.mlx_sae import MLXSAE

            got = np.array(MLXSAE(sae, top_k=K).encode(mx.array(x)))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        if arch == "topk":
            assert ((want > 0).sum(-1) <= 12).all() and ((want > 0).sum(-1) >= 10).all()


@pytest.fixture(scope="module", params=CASES)
def loaded(request, tiny_fixture):
    engine, arch = request.param
    name, _, eng = engine.partition(":")
    backend = registry.resolve(name)()
    if eng:
        backend.engine = eng
    shape = tiny_fixture.shape
    sae = arch_sae(shape.hidden_size, shape.d_sae, arch)
    info = backend.load(ModelSpec(str(tiny_fixture.model_dir)), sae, tiny_fixture.sae_layer, top_k=K)
    yield backend, info, sae, arch
    backend.close()


@pytest.fixture(scope="module")
def prompt_ids(tiny_fixture):
    from neuroscope.core.checkpoint import load_tokenizer

    tok = load_tokenizer(tiny_fixture.model_dir)
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    return tok.encode(text, add_special_tokens=False)


@functools.lru_cache(maxsize=None)
def _reference(fx, arch: str, features: tuple, prompt: tuple[int, ...]):
    sae = arch_sae(fx.shape.hidden_size, fx.shape.d_sae, arch)
    tokens, resid = steered_greedy(fx.model_dir, sae, fx.sae_layer, list(prompt), list(features), "all", N_TOKENS)
    return tokens, reference_acts(sae, resid)


def _check(steps, want_tokens, acts, n_prompt):
    assert [s.token_id for s in steps if not s.prompt] == want_tokens
    prompt = [s for s in steps if s.prompt]
    assert len(prompt) == n_prompt
    for s in steps:
        assert_topk_matches(s, acts[s.position], K)


def test_features_equal_the_reference_of_each_architecture(loaded, prompt_ids, tiny_fixture):
    backend, _, _, arch = loaded
    want_tokens, acts = _reference(tiny_fixture, arch, (), tuple(prompt_ids))
    steps = list(generate(backend, prompt_ids, GenerationParams(max_tokens=N_TOKENS, prompt_features=True)))
    _check(steps, want_tokens, acts, len(prompt_ids))
    if arch == "topk":
        assert all(s.l0 <= 12 for s in steps) and any(s.l0 == 12 for s in steps)


def _busy_features(tiny_fixture, arch, prompt_ids) -> tuple[int, int]:
    """Two features that fire at many positions of the unsteered run (so clamping them changes where they fire)."""
    _, acts = _reference(tiny_fixture, arch, (), tuple(prompt_ids))
    order = np.argsort(-(acts > 0).sum(0), kind="stable")
    return int(order[0]), int(order[1])


@pytest.mark.parametrize("mode", ["clamp", "ablate"])
def test_steering_a_topk_and_a_relu_sae_equals_the_numpy_rule(loaded, prompt_ids, tiny_fixture, mode):
    backend, _, _, arch = loaded
    if arch == "jumprelu-saelens" and mode == "ablate":
        pytest.skip("JumpReLU ablation is covered by test_steering.py; here its input scale is clamped")
    a, b = _busy_features(tiny_fixture, arch, prompt_ids)
    features = ((a, "clamp", 9.0), (b, mode, 0.0 if mode == "ablate" else 4.0))
    want_tokens, acts = _reference(tiny_fixture, arch, features, tuple(prompt_ids))
    steering = Steering(tuple(SteerFeature(i, m, v) for i, m, v in features), "all")  # type: ignore[arg-type]
    steps = list(generate(backend, prompt_ids, GenerationParams(max_tokens=N_TOKENS, steering=steering,
                                                                prompt_features=True)))
    _check(steps, want_tokens, acts, len(prompt_ids))
    assert acts[:, a].max() > 0  # the clamped feature fires in the steered run


def test_batched_rows_equal_their_solo_runs(loaded, prompt_ids):
    backend, _, _, arch = loaded
    if getattr(backend, "engine", None) == "compiled" and arch != "topk":
        pytest.skip("compiled batch buckets cost minutes on a CPU: TopK (the encode that differs) is checked here, "
                    "the JumpReLU rule by test_batching_compiled.py")
    a = 5
    steer = Steering((SteerFeature(a, "clamp", 6.0), SteerFeature(a + 1, "ablate", 0.0)), "all")
    reqs = [Collect(prompt_ids, GenerationParams(max_tokens=10, prompt_features=True)),
            Collect(prompt_ids[:-4], GenerationParams(max_tokens=8, steering=steer)),
            Collect(prompt_ids[3:], GenerationParams(max_tokens=9, steering=steer), join_at=2)]
    check(backend, reqs, max_batch=4, max_context=128)


def test_the_corpus_pass_of_each_architecture_equals_the_reference(loaded, tiny_fixture):
    from neuroscope.calibration import corpus_pass
    from tests.backend.test_corpus_pass import TEXTS, _reference_stats

    backend, info, sae, _ = loaded
    if getattr(backend, "engine", None) == "compiled":
        pytest.skip("the corpus pass is one path for both torch engines (eager)")
    tok = info.tokenizer
    samples = [corpus_pass.tokenize(tok, t, 40) for t in TEXTS[:3]]
    st = corpus_pass.run_batch(backend, samples, corpus_pass.special_ids(tok), corpus_pass.pad_id(tok)).stats
    n, count, total, _, mx = _reference_stats(tiny_fixture, sae, info, samples)
    assert st.tokens == n
    np.testing.assert_array_equal(st.count, count)
    np.testing.assert_allclose(st.sum, total, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(st.max, mx, rtol=1e-4, atol=1e-5)
