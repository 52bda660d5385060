"""Every backend available on this machine behaves the same on the tiny checkpoint.

Each step's features are checked against the numpy reference encoder applied to transformers' own
residual at that step's position.
"""

from __future__ import annotations

import numpy as np
import pytest

from neuroscope.core import registry
from neuroscope.core.decode import generate
from neuroscope.core.protocol import FeatureFilter, GenerationParams
from neuroscope.core.sae import SAEError, SAEWeights, load_npz
from tests.support.reference import assert_topk_matches, load_backend, reference_acts, residuals

BACKENDS = registry.available()
K = 8
EACH_BACKEND = pytest.mark.parametrize(
    "name", BACKENDS or [pytest.param(None, marks=pytest.mark.skip("no backend is available here"))]
)


COMPILED = "torch-cpu-compiled"  # torch-cpu under --engine compiled (the session's shared compiled backend)


@pytest.fixture(scope="module", params=[*BACKENDS, *([COMPILED] if "torch-cpu" in BACKENDS else [])]
                or [pytest.param(None, marks=pytest.mark.skip("no backend"))])
def loaded(request, tiny_fixture):
    """Every backend here, plus torch-cpu's compiled engine: the conformance checks hold for both engines."""
    if request.param == COMPILED:
        yield request.getfixturevalue("compiled_cpu")
        return
    backend, info, sae = load_backend(request.param, tiny_fixture, top_k=K)
    yield backend, info, sae
    backend.close()


def _prompt(info) -> list[int]:
    text = info.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Tell me about the river and the mill."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = info.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 16, "the prompt must be longer than the sliding window"
    return ids


@pytest.fixture(scope="module")
def prompt_ids(loaded):
    return _prompt(loaded[1])


def _run(backend, ids, **kw):
    kw.setdefault("max_tokens", 40)
    return list(generate(backend, ids, GenerationParams(**kw)))


def test_greedy_is_deterministic(loaded, prompt_ids):
    backend, _, _ = loaded
    a, b = _run(backend, prompt_ids), _run(backend, prompt_ids)
    assert [s.token_id for s in a] == [s.token_id for s in b]
    assert len({s.token_id for s in a}) > 5, "the tiny model should produce varied tokens"
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.feature_ids, y.feature_ids)
        np.testing.assert_array_equal(x.feature_values, y.feature_values)


def test_greedy_tokens_equal_a_full_recompute_by_transformers(loaded, prompt_ids, tiny_fixture):
    """Each greedy token is the argmax of transformers' logits over the *whole* sequence so far, recomputed
    from scratch without any cache: whatever our caches do, they must not change a single token.
    (transformers' own cached ``generate`` is not the reference: 4.46's differs from its full recompute on
    this checkpoint, whose sliding window is shorter than the prompt.)"""
    from tests.support.reference import greedy_full_recompute

    backend, _, _ = loaded
    ours = [s.token_id for s in _run(backend, prompt_ids, max_tokens=32)]
    assert ours == greedy_full_recompute(tiny_fixture.model_dir, prompt_ids, 32)


def test_every_step_matches_the_numpy_reference(loaded, prompt_ids, tiny_fixture):
    backend, _, sae = loaded
    steps = _run(backend, prompt_ids, max_tokens=40, prompt_features=True)
    prompt = [s for s in steps if s.prompt]
    gen = [s for s in steps if not s.prompt]
    assert [s.token_id for s in prompt] == prompt_ids
    assert [s.position for s in prompt] == list(range(len(prompt_ids)))
    assert len(gen) == 40
    full = prompt_ids + [s.token_id for s in gen]
    acts = reference_acts(sae, residuals(tiny_fixture.model_dir, full, tiny_fixture.sae_layer))
    for s in prompt:
        assert_topk_matches(s, acts[s.position], K)
    for i, s in enumerate(gen):
        assert s.position == len(prompt_ids) + i - 1  # the residual whose logits chose this token
        assert_topk_matches(s, acts[s.position], K)
    assert np.mean([s.l0 for s in gen]) > K, "the fixture SAE should fire more than k features per token"


@EACH_BACKEND
def test_rms_input_norm_matches_reference(name, tiny_fixture, prompt_ids):
    backend, _, sae = load_backend(name, tiny_fixture, top_k=K, norm="rms")
    try:
        steps = _run(backend, prompt_ids, max_tokens=12)
    finally:
        backend.close()
    assert len(steps) == 12
    full = prompt_ids + [s.token_id for s in steps]
    acts = reference_acts(sae, residuals(tiny_fixture.model_dir, full, tiny_fixture.sae_layer), "rms")
    raw = reference_acts(sae, residuals(tiny_fixture.model_dir, full, tiny_fixture.sae_layer), "none")
    for s in steps:
        assert_topk_matches(s, acts[s.position], K)
    assert sum(s.l0 for s in steps) != int((raw[[s.position for s in steps]] > 0).sum())


def test_prompt_features_only_when_asked(loaded, prompt_ids):
    backend, _, _ = loaded
    assert not any(s.prompt for s in _run(backend, prompt_ids, max_tokens=3))


def test_max_tokens_and_length_finish(loaded, prompt_ids):
    backend, _, _ = loaded
    steps = _run(backend, prompt_ids, max_tokens=7)
    assert len(steps) == 7
    assert [s.finish_reason for s in steps] == [None] * 6 + ["length"]


def test_eos_ends_generation(loaded, prompt_ids):
    backend, _, _ = loaded
    greedy = [s.token_id for s in _run(backend, prompt_ids, max_tokens=20)]
    eos = greedy[5]
    first = greedy.index(eos)
    steps = _run(backend, prompt_ids, max_tokens=20, eos_token_ids=frozenset({eos}))
    assert [s.token_id for s in steps] == greedy[: first + 1]
    assert steps[-1].finish_reason == "stop"


def test_seeded_sampling_is_reproducible(loaded, prompt_ids):
    backend, _, _ = loaded
    a = _run(backend, prompt_ids, temperature=1.0, seed=123, max_tokens=30)
    b = _run(backend, prompt_ids, temperature=1.0, seed=123, max_tokens=30)
    c = _run(backend, prompt_ids, temperature=1.0, seed=7, max_tokens=30)
    greedy = _run(backend, prompt_ids, max_tokens=30)
    tokens = lambda steps: [s.token_id for s in steps]  # noqa: E731
    assert tokens(a) == tokens(b)
    assert tokens(a) != tokens(c)
    assert tokens(a) != tokens(greedy)


def test_tiny_top_p_is_greedy(loaded, prompt_ids):
    backend, _, _ = loaded
    nucleus = _run(backend, prompt_ids, temperature=1.0, top_p=1e-6, seed=3, max_tokens=20)
    assert [s.token_id for s in nucleus] == [s.token_id for s in _run(backend, prompt_ids, max_tokens=20)]


def test_feature_filter_acts_before_topk(loaded, prompt_ids, tiny_fixture):
    backend, _, sae = loaded
    base = _run(backend, prompt_ids, max_tokens=10)
    banned = sorted({int(s.feature_ids[0]) for s in base})
    mask = np.ones(sae.d_sae, dtype=bool)
    mask[banned] = False
    backend.set_feature_filter(FeatureFilter(mask=mask))
    try:
        masked = _run(backend, prompt_ids, max_tokens=10)
    finally:
        backend.set_feature_filter(FeatureFilter())
    assert [s.token_id for s in masked] == [s.token_id for s in base], "filters must not change the text"
    full = prompt_ids + [s.token_id for s in base]
    acts = reference_acts(sae, residuals(tiny_fixture.model_dir, full, tiny_fixture.sae_layer))
    for b, m in zip(base, masked):
        assert not set(banned) & set(m.feature_ids.tolist())
        allowed = np.where(mask, acts[m.position], 0.0)
        # the filter acts before top-k: k features whenever k unbanned ones fired (not k minus the banned)
        assert len(m.feature_ids) == min(K, int((allowed > 0).sum()))
        np.testing.assert_allclose(m.feature_values, allowed[m.feature_ids], rtol=1e-4, atol=1e-4)
        assert m.l0 == b.l0  # L0 counts what fired, before any mask
        # what fired but the mask excluded is counted on the device, in the same record
        assert m.filtered == int(((acts[m.position] > 0) & ~mask).sum()) and b.filtered == 0
    assert any(m.filtered > 0 for m in masked)
    scale = np.ones(sae.d_sae, dtype=np.float32)
    boosted = int(base[0].feature_ids[-1])
    scale[boosted] = 1000.0
    backend.set_feature_filter(FeatureFilter(scale=scale))
    try:
        scaled = _run(backend, prompt_ids, max_tokens=1)[0]
    finally:
        backend.set_feature_filter(FeatureFilter())
    assert int(scaled.feature_ids[0]) == boosted
    np.testing.assert_allclose(scaled.feature_values[0], base[0].feature_values[-1], rtol=1e-5)  # raw activation


@EACH_BACKEND
def test_capture_off_decodes_the_same_tokens(name, tiny_fixture):
    # each backend's eager step (capture off is the benchmarks' baseline; under the compiled engine its graph is
    # built by `python -m benchmarks`, so that engine is not a case here)
    backend, info, _ = load_backend(name, tiny_fixture, top_k=K)
    prompt_ids = _prompt(info)
    try:
        on = _run(backend, prompt_ids, max_tokens=15)
        backend.capture = False
        off = _run(backend, prompt_ids, max_tokens=15)
    finally:
        backend.close()
    assert [s.token_id for s in off] == [s.token_id for s in on]
    assert all(s.feature_ids.size == 0 for s in off)


@EACH_BACKEND
def test_sae_that_does_not_fit_the_model_is_refused(name, tiny_fixture):
    from neuroscope.core.protocol import ModelSpec

    sae = load_npz(tiny_fixture.sae_path)
    wide = SAEWeights(
        np.zeros((sae.d_model * 2, 8), np.float32), np.zeros(8, np.float32), np.zeros(8, np.float32),
        np.zeros((8, sae.d_model * 2), np.float32), np.zeros(sae.d_model * 2, np.float32), source="wide.npz",
    )
    with pytest.raises(SAEError, match=rf"{sae.d_model * 2}.*{sae.d_model}"):
        registry.resolve(name)().load(ModelSpec(str(tiny_fixture.model_dir)), wide, 2, top_k=4)
    with pytest.raises(SAEError, match=r"layer 9.*4 layers"):
        registry.resolve(name)().load(ModelSpec(str(tiny_fixture.model_dir)), sae, 9, top_k=4)


def test_a_failed_prefill_leaks_nothing_into_the_next_request(loaded, prompt_ids, monkeypatch):
    """A request that dies mid-prefill (here: the SAE fails while the prompt's features are being encoded)
    must leave no per-request state behind: the next request reports its own steps only."""
    backend, info, _ = loaded
    other = info.tokenizer.encode("The mill stands by the river.", add_special_tokens=False)
    clean = _run(backend, other, max_tokens=6)
    real_topk = backend.sae.topk
    calls = {"n": 0}

    def failing_topk(x):
        calls["n"] += 1
        raise RuntimeError("device lost during prefill")

    monkeypatch.setattr(backend.sae, "topk", failing_topk)
    with pytest.raises(RuntimeError, match="device lost"):
        _run(backend, prompt_ids, max_tokens=6, prompt_features=True)
    assert calls["n"] >= 1, "the failure was not injected where it was meant to be"
    monkeypatch.setattr(backend.sae, "topk", real_topk)
    after = _run(backend, other, max_tokens=6)
    assert not any(s.prompt for s in after), "the failed request's prompt features leaked into the next one"
    assert [(s.token_id, s.position, s.feature_ids.tolist()) for s in after] == [
        (s.token_id, s.position, s.feature_ids.tolist()) for s in clean
    ]
