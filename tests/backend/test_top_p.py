"""Mid-range top-p on every backend: a seeded draw from the nucleus, checked against transformers' logits.

The README documents ``top_p``; the conformance suite only checks its extremes (a tiny nucleus is greedy).
Here ``top_p=0.5`` must sample (not greedy), differ from ``top_p=1`` under the same seed, repeat under the same
seed, and draw every token from the nucleus that a numpy reference computes from transformers' own logits.
"""

from __future__ import annotations

import pytest

from neuroscope.core import registry
from neuroscope.core.decode import generate
from neuroscope.core.protocol import GenerationParams, ModelSpec
from neuroscope.core.sae import load_npz
from tests.support.sampling import next_token_logits, nucleus_size, outside_nucleus

BACKENDS = registry.available()
N = 40
TOP_P = 0.5
TEMPERATURE = 1.0
SEEDS = (7, 8)


@pytest.fixture(scope="module", params=BACKENDS or [pytest.param(None, marks=pytest.mark.skip("no backend"))])
def loaded(request, tiny_fixture):
    # float32 on every backend (torch-cuda defaults to bf16): the reference logits are float32 and the nucleus
    # boundary of the nearly flat tiny model must not move with rounding
    backend = registry.resolve(request.param)()
    info = backend.load(ModelSpec(str(tiny_fixture.model_dir), dtype="float32"), load_npz(tiny_fixture.sae_path),
                        tiny_fixture.sae_layer, top_k=8)
    yield backend, info
    backend.close()


@pytest.fixture(scope="module")
def prompt_ids(loaded):
    _, info = loaded
    return info.tokenizer.encode("The river bends around the old mill where the village keeps its grain.")


def _tokens(backend, prompt_ids, **kw) -> list[int]:
    params = GenerationParams(max_tokens=N, **kw)
    steps = list(generate(backend, prompt_ids, params))
    assert len(steps) == N and steps[-1].finish_reason == "length"
    return [s.token_id for s in steps]


def test_mid_range_top_p_samples_inside_the_nucleus(loaded, prompt_ids, tiny_fixture):
    backend, _ = loaded
    greedy = _tokens(backend, prompt_ids, temperature=0.0)
    for seed in SEEDS:
        nucleus = _tokens(backend, prompt_ids, temperature=TEMPERATURE, top_p=TOP_P, seed=seed)
        assert _tokens(backend, prompt_ids, temperature=TEMPERATURE, top_p=TOP_P, seed=seed) == nucleus, \
            "the same seed must give the same tokens"
        full = _tokens(backend, prompt_ids, temperature=TEMPERATURE, top_p=1.0, seed=seed)
        assert nucleus != greedy, "top_p=0.5 at temperature 1 must sample, not decode greedily"
        assert nucleus != full, "top_p=0.5 must change what the same seed draws at top_p=1"

        logits = next_token_logits(tiny_fixture.model_dir, prompt_ids, nucleus)
        sizes = [nucleus_size(row, TEMPERATURE, TOP_P) for row in logits]
        assert min(sizes) > 1, "the nucleus should hold several tokens, or this is greedy in disguise"
        assert outside_nucleus(logits, nucleus, TEMPERATURE, TOP_P) == [], \
            f"seed {seed}: tokens drawn from outside the top-{TOP_P} nucleus (step, token, mass before it)"

        # the check has teeth: without the nucleus the same seed draws tokens the nucleus excludes
        logits_full = next_token_logits(tiny_fixture.model_dir, prompt_ids, full)
        assert outside_nucleus(logits_full, full, TEMPERATURE, TOP_P), \
            "top_p=1 never left the 0.5 nucleus in 40 draws: the nucleus check cannot tell them apart"


def test_other_seeds_draw_other_tokens(loaded, prompt_ids):
    backend, _ = loaded
    a, b = (_tokens(backend, prompt_ids, temperature=TEMPERATURE, top_p=TOP_P, seed=s) for s in SEEDS)
    assert a != b
