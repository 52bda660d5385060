"""Gemma 3 with an SAE in each format — Gemma Scope ``params.npz``, a Gemma Scope 2 directory, a SAELens
directory (TopK, ``b_dec`` subtracted from the input) — read through the real loader (files detected, layer from
the SAE's config), on torch eager, torch compiled and MLX: greedy tokens equal transformers' ``Gemma3ForCausalLM``
full recompute past the sliding window, and every token's features (top-k ids, values, l0) equal the numpy
encoder of that architecture on transformers' block output."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from neuroscope.core import registry, sae_formats
from neuroscope.core.decode import generate
from neuroscope.core.protocol import GenerationParams, ModelSpec
from neuroscope.core.sae import load_npz
from neuroscope.core.sae_writers import write_sae
from tests.support.reference import assert_topk_matches, greedy_full_recompute, reference_acts, residuals

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not hasattr(transformers, "Gemma3ForCausalLM"),
                                reason="the reference is transformers' Gemma3ForCausalLM: needs transformers >= 4.50")

K = 8
N = 24
FORMATS = (sae_formats.GEMMA_SCOPE, sae_formats.GEMMA_SCOPE_2, sae_formats.SAELENS)
ENGINES = ("torch-cpu", "torch-cpu:compiled", "mlx")


def _sae(fx, fmt: str):
    base = load_npz(fx.sae_path)
    if fmt != sae_formats.SAELENS:
        return base
    rng = np.random.default_rng(5)
    b_dec = (rng.standard_normal(base.d_model) * 0.5).astype(np.float32)
    return dataclasses.replace(base, threshold=np.zeros_like(base.threshold), architecture="topk", k=12,
                               apply_b_dec_to_input=True, b_dec=b_dec)


@pytest.fixture(scope="module")
def written(tiny_gemma3_fixture, tmp_path_factory):
    """Each format's files, written once; the npz names no layer (given as --sae-layer), the others declare it."""
    root = tmp_path_factory.mktemp("gemma3-saes")
    return {fmt: write_sae(root / fmt, _sae(tiny_gemma3_fixture, fmt), fmt, layer=tiny_gemma3_fixture.sae_layer)
            for fmt in FORMATS}



@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("engine", ENGINES)
def test_tokens_and_features_equal_transformers_and_numpy(engine, fmt, written, tiny_gemma3_fixture):
    name, _, eng = engine.partition(":")
    if name not in registry.available():
        pytest.skip(f"{name} is not available here")
    fx = tiny_gemma3_fixture
    loc = sae_formats.detect(written[fmt])
    assert loc.format == fmt
    sae = sae_formats.load(loc)
    given = fx.sae_layer if sae.layer is None else None  # a params.npz names no layer: the CLI's --sae-layer
    layer = sae_formats.resolve_layer(given, sae.layer)
    assert layer == fx.sae_layer
    backend = registry.resolve(name)()
    if eng:
        backend.engine = eng
    try:
        info = backend.load(ModelSpec(str(fx.model_dir)), sae, layer, top_k=K)
        tok = info.tokenizer
        text = tok.apply_chat_template([{"role": "user", "content": "Tell me about the river and the old mill."}],
                                       tokenize=False, add_generation_prompt=True)
        prompt = tok.encode(text, add_special_tokens=False)
        assert len(prompt) + N > 2 * info.sliding_window
        steps = list(generate(backend, prompt, GenerationParams(max_tokens=N, prompt_features=True)))
    finally:
        backend.close()
    gen = [s for s in steps if not s.prompt]
    assert [s.token_id for s in gen] == greedy_full_recompute(fx.model_dir, prompt, N)
    acts = reference_acts(sae, residuals(fx.model_dir, prompt + [s.token_id for s in gen], layer))
    for s in steps:
        assert_topk_matches(s, acts[s.position], K)
    assert np.mean([s.l0 for s in gen]) > K, "the SAE should fire more than k features per token"
