"""Gemma-3 through every torch engine: the batched step (rows of different lengths, joining mid-way) and the
compiled step, solo and batched, decode what the eager solo step decodes — and that is transformers' greedy
text past the 16-token window; the compiled graphs are not compiled again for requests in the same buckets.
The batched and compiled steps are the ones Gemma-2 runs: the family reaches them through the model's
``embed`` / ``rope`` / ``masks`` / ``logits`` and each block's attention."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from neuroscope.core.decode import generate  # noqa: E402
from neuroscope.core.protocol import GenerationParams, SteerFeature, Steering  # noqa: E402
from tests.backend.test_batching import Collect, assert_same, run_batched, solo  # noqa: E402
from tests.backend.test_torch_gemma3 import needs_hf_gemma3  # noqa: E402
from tests.support.reference import greedy_full_recompute, load_backend  # noqa: E402

K = 8


@pytest.fixture(scope="module")
def eager(tiny_gemma3_fixture):
    backend, info, _ = load_backend("torch-cpu", tiny_gemma3_fixture, top_k=K)
    yield backend, info
    backend.close()


@pytest.fixture(scope="module")
def compiled(tiny_gemma3_fixture):
    backend, info, _ = load_backend("torch-cpu:compiled", tiny_gemma3_fixture, top_k=K)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def prompts(eager):
    tok = eager[1].tokenizer
    texts = ["What is the capital of France? Tell me about the river and the mill.", "Hi",
             "One two three four five six seven"]
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                              add_generation_prompt=True), add_special_tokens=False) for t in texts]
    assert len({len(i) for i in ids}) == 3 and max(len(i) for i in ids) > 16
    return ids


def _requests(prompts, logprobs=None):
    """Three rows: greedy, sampled and steered (joins at turn 2), penalised (joins at turn 5; with ``logprobs``
    under the eager engine: under the compiled one logprobs are another graph per bucket)."""
    steer = Steering((SteerFeature(3, "add", 40.0),))
    return [Collect(prompts[0], GenerationParams(max_tokens=24)),
            Collect(prompts[1], GenerationParams(max_tokens=20, temperature=0.9, seed=4, steering=steer), join_at=2),
            Collect(prompts[2], GenerationParams(max_tokens=16, frequency_penalty=0.6, logprobs=logprobs), join_at=5)]



@pytest.fixture(scope="module")
def batched(eager, prompts):
    """Six requests through the eager batch (4 rows): three mixed, three greedy joining at turns 0, 3 and 6."""
    backend = eager[0]
    greedy = [Collect(p, GenerationParams(max_tokens=24), join_at=j) for p, j in zip(prompts, (0, 3, 6))]
    reqs = _requests(prompts, logprobs=2) + greedy
    sizes = run_batched(backend, reqs, max_batch=4, max_context=128)
    backend.batch = None
    return reqs, greedy, sizes


def test_batched_rows_equal_solo(eager, batched):
    reqs, _, sizes = batched
    assert max(sizes) == 4, sizes
    for r in reqs:
        assert_same(r.steps, solo(eager[0], r))


@needs_hf_gemma3
def test_batched_greedy_rows_equal_transformers(batched, tiny_gemma3_fixture):
    for r in batched[1]:  # joined mid-way, rows of other lengths beside them, decoded past the window
        assert len(r.prompt_ids) + 24 > 16
        assert [s.token_id for s in r.steps] == greedy_full_recompute(tiny_gemma3_fixture.model_dir, r.prompt_ids, 24)


def _same(a, b):
    assert [s.token_id for s in a] == [s.token_id for s in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.feature_ids, y.feature_ids)
        np.testing.assert_allclose(x.feature_values, y.feature_values, rtol=1e-4, atol=1e-4)
        assert (x.l0, x.filtered) == (y.l0, y.filtered)


def test_compiled_equals_eager_and_compiles_once_per_bucket(compiled, eager, prompts):
    from torch._dynamo.utils import counters

    kw = [dict(max_tokens=40), dict(max_tokens=30, temperature=0.8, seed=3,
                                    steering=Steering((SteerFeature(3, "add", 40.0),), "all"))]
    first = [list(generate(compiled, prompts[0], GenerationParams(**k))) for k in kw]
    for k, got in zip(kw, first):
        _same(got, list(generate(eager[0], prompts[0], GenerationParams(**k))))
    graphs, frames = counters["stats"]["unique_graphs"], dict(counters["frames"])
    recompiles = sum(counters["recompiles"].values())
    for k in kw:  # other prompt lengths, the same bucket and graphs
        list(generate(compiled, prompts[2], GenerationParams(**k)))
    assert counters["stats"]["unique_graphs"] == graphs, "the compiled step was compiled again"
    assert sum(counters["recompiles"].values()) == recompiles
    assert dict(counters["frames"]) == frames
    assert not counters["graph_break"], f"graph breaks: {dict(counters['graph_break'])}"


def test_compiled_batched_rows_equal_solo_and_do_not_recompile(compiled, prompts):
    from torch._dynamo.utils import counters

    reqs = _requests(prompts)
    run_batched(compiled, reqs, max_batch=2, max_context=256)
    for r in reqs:
        assert_same(r.steps, solo(compiled, r))
    graphs, frames = counters["stats"]["unique_graphs"], dict(counters["frames"])
    again = _requests(prompts)
    run_batched(compiled, again, max_batch=2, max_context=256)
    assert counters["stats"]["unique_graphs"] == graphs, "the batched step was compiled again"
    assert dict(counters["frames"]) == frames
    for a, b in zip(reqs, again):
        assert_same(b.steps, a.steps)
    compiled.batch = None
