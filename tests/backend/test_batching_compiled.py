"""Continuous batching under ``--engine compiled``: the batched step compiled once per (batch bucket, KV-length
bucket); every request decodes as it does alone, and a second pass over the same buckets compiles nothing."""

from __future__ import annotations

import pytest

from neuroscope.core.protocol import GenerationParams, SteerFeature, Steering
from tests.backend.test_batching import Collect, assert_same, run_batched, solo


@pytest.fixture(scope="module")
def prompts(compiled_cpu):
    _, info, _ = compiled_cpu
    tok = info.tokenizer
    texts = ["What is the capital of France? Tell me about the river.", "Hi", "One two three four five six seven"]
    return [tok.encode(tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                               add_generation_prompt=True), add_special_tokens=False) for t in texts]


def _requests(prompts):
    steer = Steering((SteerFeature(3, "add", 40.0),))
    return [Collect(prompts[0], GenerationParams(max_tokens=12)),
            Collect(prompts[1], GenerationParams(max_tokens=10, temperature=0.9, seed=4, steering=steer), join_at=2),
            Collect(prompts[2], GenerationParams(max_tokens=8, frequency_penalty=0.6), join_at=3)]


def test_batched_compiled_steps_equal_solo_and_do_not_recompile(compiled_cpu, prompts):
    from torch._dynamo.utils import counters

    backend, _, _ = compiled_cpu
    reqs = _requests(prompts)
    sizes = run_batched(backend, reqs, max_batch=4, max_context=256)
    assert max(sizes) == 3, sizes
    for r in reqs:
        assert_same(r.steps, solo(backend, r))
    # the same buckets again (1, 2, 4 rows; 256 positions): no new graph, no recompile
    graphs, frames = counters["stats"]["unique_graphs"], dict(counters["frames"])
    recompiles = sum(counters["recompiles"].values())
    again = _requests(prompts)
    run_batched(backend, again, max_batch=4, max_context=256)
    assert counters["stats"]["unique_graphs"] == graphs, "the batched step was compiled again"
    assert sum(counters["recompiles"].values()) == recompiles
    assert dict(counters["frames"]) == frames
    for a, b in zip(reqs, again):
        assert_same(b.steps, a.steps)
    backend.batch = None
