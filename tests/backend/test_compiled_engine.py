"""``--engine compiled`` against ``--engine eager`` on torch-cpu: the same decode step, compiled with inductor.

The compiled backend is the session's shared one (``compiled_cpu``), so its graphs compile once. Every
comparison decodes the same request on both engines: the same tokens, the same top-k ids and activations
within float32 rounding (inductor fuses and reorders reductions), for greedy and seeded sampling, under a
filter, with steering and with logprobs. Then the property that makes CUDA graphs possible: after warm-up,
200 steps and requests of other lengths in the same cache bucket run without a single new compile.
"""

from __future__ import annotations

import numpy as np
import pytest
from torch._dynamo.utils import counters

from backends.torch_gemma2 import cache_size
from neuroscope.core.decode import generate
from neuroscope.core.protocol import BackendError, FeatureFilter, GenerationParams, SteerFeature, Steering
from tests.support.reference import load_backend

K = 8
TOL = 1e-4
STEERING = Steering((SteerFeature(193, "add", 8.0), SteerFeature(2, "clamp", 3.0)), "generated")


@pytest.fixture(scope="module")
def eager(tiny_fixture):
    backend, info, sae = load_backend("torch-cpu", tiny_fixture, top_k=K)
    assert backend.engine == "eager"
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def prompt_ids(compiled_cpu):
    return compiled_cpu[1].tokenizer.encode("The river bends around the old mill where the village keeps its grain.")


def _run(backend, ids, **kw):
    kw.setdefault("max_tokens", 48)
    return list(generate(backend, ids, GenerationParams(**kw)))


def _assert_same(a, b):
    assert [s.token_id for s in a] == [s.token_id for s in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.feature_ids, y.feature_ids)
        np.testing.assert_allclose(x.feature_values, y.feature_values, rtol=TOL, atol=TOL)
        assert (x.l0, x.filtered, x.position) == (y.l0, y.filtered, y.position)


@pytest.mark.parametrize("kw", [
    pytest.param({}, id="greedy"),
    pytest.param({"temperature": 1.0, "seed": 11}, id="seeded"),
    pytest.param({"temperature": 0.8, "top_p": 0.7, "seed": 3}, id="seeded-top-p"),
    pytest.param({"steering": STEERING}, id="steered"),
    pytest.param({"temperature": 1.0, "seed": 5, "steering": Steering(STEERING.features, "all")}, id="steered-all"),
])
def test_compiled_step_equals_the_eager_step(compiled_cpu, eager, prompt_ids, kw):
    compiled = compiled_cpu[0]
    a, b = _run(eager, prompt_ids, **kw), _run(compiled, prompt_ids, **kw)
    _assert_same(a, b)
    assert len({s.token_id for s in a}) > 5
    assert sum(len(s.feature_ids) for s in a) > K * len(a) // 2, "the features must be there to be compared"


def test_compiled_equals_eager_under_a_filter(compiled_cpu, eager, prompt_ids):
    compiled, _, sae = compiled_cpu
    base = _run(eager, prompt_ids, max_tokens=12)
    mask = np.ones(sae.d_sae, dtype=bool)
    mask[sorted({int(s.feature_ids[0]) for s in base})] = False
    scale = np.linspace(0.5, 2.0, sae.d_sae).astype(np.float32)
    flt = FeatureFilter(mask=mask, scale=scale)
    for backend in (eager, compiled):
        backend.set_feature_filter(flt)
    try:
        a = _run(eager, prompt_ids, temperature=1.0, seed=9)
        b = _run(compiled, prompt_ids, temperature=1.0, seed=9)
    finally:
        for backend in (eager, compiled):
            backend.set_feature_filter(FeatureFilter())
    _assert_same(a, b)
    assert any(s.filtered > 0 for s in b), "the mask hid nothing: the filter was not applied"
    assert not {int(i) for s in b for i in s.feature_ids} & set(np.flatnonzero(~mask).tolist())
    # the filter is a tensor input, not baked into the graph: without it the banned features come back
    after = _run(compiled, prompt_ids, temperature=1.0, seed=9)
    assert any(set(s.feature_ids.tolist()) & set(np.flatnonzero(~mask).tolist()) for s in after)


def test_compiled_logprobs_and_penalties_equal_eager(compiled_cpu, eager, prompt_ids):
    compiled = compiled_cpu[0]
    kw = dict(max_tokens=16, temperature=0.7, seed=2, logprobs=3, logit_bias=((7, 5.0),), presence_penalty=0.5,
              frequency_penalty=0.3)
    a, b = _run(eager, prompt_ids, **kw), _run(compiled, prompt_ids, **kw)
    _assert_same(a, b)
    for x, y in zip(a, b):
        assert len(y.top_logprobs) == 3
        assert [i for i, _ in x.top_logprobs] == [i for i, _ in y.top_logprobs]
        np.testing.assert_allclose([v for _, v in x.top_logprobs], [v for _, v in y.top_logprobs], atol=TOL)
        assert y.logprob == pytest.approx(x.logprob, abs=TOL)


def test_no_recompiles_after_warm_up(compiled_cpu, prompt_ids):
    """200 steps, then requests of other prompt lengths, sampling settings, a filter and steering, all in the
    bucket of the first: dynamo compiles nothing new (the position, the filter, the steering and the sampling
    parameters are tensors, the cache is the bucket's own)."""
    backend, info, sae = compiled_cpu
    other = info.tokenizer.encode("The mill stands by the river.")
    assert cache_size(len(prompt_ids) + 200) == cache_size(len(other) + 100) == 256
    _run(backend, prompt_ids, max_tokens=3)  # warm-up: the bucket's graph exists from here on
    graphs, frames = counters["stats"]["unique_graphs"], dict(counters["frames"])
    recompiles = sum(counters["recompiles"].values())
    long = _run(backend, prompt_ids, max_tokens=200)
    assert len(long) == 200
    _run(backend, other, max_tokens=100, temperature=1.0, top_p=0.9, seed=4)
    backend.set_feature_filter(FeatureFilter(scale=np.full(sae.d_sae, 2.0, dtype=np.float32)))
    try:
        _run(backend, other, max_tokens=20, steering=STEERING)
    finally:
        backend.set_feature_filter(FeatureFilter())
    assert counters["stats"]["unique_graphs"] == graphs, "the compiled decode step was compiled again"
    assert sum(counters["recompiles"].values()) == recompiles
    assert dict(counters["frames"]) == frames
    assert not counters["graph_break"], f"graph breaks: {dict(counters['graph_break'])}"


def test_a_request_whose_buffers_were_taken_is_refused(compiled_cpu, prompt_ids):
    """The compiled engine's static buffers belong to the newest request: an older request's generator that
    resumes afterwards fails loudly instead of decoding from the newer request's cache."""
    backend = compiled_cpu[0]
    first = generate(backend, prompt_ids, GenerationParams(max_tokens=10))
    next(first)
    _run(backend, prompt_ids, max_tokens=2)
    with pytest.raises(BackendError, match="newer request"):
        list(first)


def test_inductor_cache_goes_under_the_neuroscope_cache(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from backends.torch_compiled import use_neuroscope_inductor_cache

    monkeypatch.setenv("NEUROSCOPE_CACHE", str(tmp_path / "ns"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing torch._dynamo sets
    assert use_neuroscope_inductor_cache() == str(tmp_path / "ns" / "inductor")
    assert (tmp_path / "ns" / "inductor").is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's choice stands
    assert use_neuroscope_inductor_cache() == str(tmp_path / "mine")


def test_unknown_engines_are_refused(tiny_fixture):
    from neuroscope.core import registry
    from neuroscope.core.protocol import ModelSpec
    from neuroscope.core.sae import load_npz

    backend = registry.resolve("torch-cpu")()
    backend.engine = "fast"
    with pytest.raises(BackendError, match="unknown engine 'fast'"):
        backend.load(ModelSpec(str(tiny_fixture.model_dir)), load_npz(tiny_fixture.sae_path), 2, top_k=4)


def test_everything_the_step_reads_or_writes_keeps_its_address(compiled_cpu, prompt_ids):
    """CUDA graphs replay fixed addresses, and cudagraph trees accept in-place writes only into static inputs:
    the bucket's cache, the step inputs, the SAE and filter buffers are marked static and are the very same
    tensors from one request to the next (a filter change writes into them, it does not replace them)."""
    backend, _, sae = compiled_cpu
    engine = backend.compiled
    _run(backend, prompt_ids, max_tokens=4)
    cache = engine._caches[256]
    tensors = [*cache.keys, *cache.values, cache.key_positions, *engine.inputs.tensors(),
               *backend.sae.static_tensors(), *backend.model.static_tensors()]
    unmarked = [i for i, t in enumerate(tensors) if not hasattr(t, "_dynamo_static_input_type")]
    assert not unmarked, f"tensors not marked static: {unmarked}"
    before = [t.data_ptr() for t in tensors]
    backend.set_feature_filter(FeatureFilter(scale=np.full(sae.d_sae, 3.0, dtype=np.float32)))
    try:
        _run(backend, prompt_ids[:7], max_tokens=30, steering=STEERING, logprobs=2)
    finally:
        backend.set_feature_filter(FeatureFilter())
    assert engine._caches[256] is cache
    assert [t.data_ptr() for t in tensors] == before


def test_shorter_requests_use_the_warmed_up_bucket(compiled_cpu, prompt_ids):
    """After start-up's warm-up of a long bucket (``warm_up`` sets ``min_size``; tests/cli/test_engine.py checks
    that), a short request's prefill takes that bucket's cache, so no compile stands in its way. Only the
    prefill runs here: decoding in a 512 bucket would compile a graph for nothing else."""
    backend = compiled_cpu[0]
    engine = backend.compiled
    engine.min_size = 512
    try:
        pre = backend.prefill(prompt_ids, GenerationParams(max_tokens=20))
        assert pre.state.cache.size == 512 and pre.state.cache is engine._caches[512]
    finally:
        engine.min_size = 0
        engine._caches.pop(512, None)
    assert backend.prefill(prompt_ids, GenerationParams(max_tokens=20)).state.cache.size == 256
