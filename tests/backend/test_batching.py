"""Continuous batching (:class:`neuroscope.core.decode.Scheduler`): every request decodes exactly as it does alone.

Each scenario runs several requests through the scheduler at once (different prompt lengths, joining mid-way,
cancelled, steered beside an unsteered row, EOS early, stopped by its consumer, chunked prefill, sampling, logit
processing and logprobs, a feature filter) and compares each request's steps with the same request run alone by
:func:`neuroscope.core.decode.generate`: tokens, top-k ids, l0, filtered counts and logprobs equal, activations to
1e-4 relative. Greedy tokens are also checked against transformers' full recompute.
"""

from __future__ import annotations

import numpy as np
import pytest

from neuroscope.core import registry
from neuroscope.core.decode import CLOSED, Scheduler, generate
from neuroscope.core.protocol import FeatureFilter, GenerationParams, SteerFeature, Steering
from tests.support.reference import load_backend

K = 8
BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(name not in registry.available(),
                                                       reason=f"{name} is not available"))
            for name in ("torch-cpu", "mlx")]


@pytest.fixture(scope="module", params=BACKENDS)
def loaded(request, tiny_fixture):
    backend, info, sae = load_backend(request.param, tiny_fixture, top_k=K)
    yield backend, info, sae
    backend.close()


@pytest.fixture(scope="module")
def prompts(loaded):
    _, info, _ = loaded
    tok = info.tokenizer
    texts = ["What is the capital of France? Tell me about the river and the mill.", "Hello there",
             "Write a long story about a cat who lives by the sea and fishes every morning at dawn with its friend.",
             "One two three four five six"]
    out = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
           for t in texts]
    ids = [tok.encode(t, add_special_tokens=False) for t in out]
    assert len({len(i) for i in ids}) == len(ids), "the prompts should differ in length"
    return ids


class Collect:
    """A request for the scheduler: collects its steps; ``stop_after`` / ``cancel_after`` generated tokens it ends
    itself (as a stop string or a disconnected client would)."""

    def __init__(self, prompt_ids, params, *, join_at=0, stop_after=None, cancel_after=None):
        self.prompt_ids, self.params, self.join_at = list(prompt_ids), params, join_at
        self.stop_after, self.cancel_after = stop_after, cancel_after
        self.steps, self.finish, self.error = [], None, None

    def generated(self):
        return [s for s in self.steps if not s.prompt]

    def step(self, step):
        if self.cancel_after is not None and len(self.generated()) >= self.cancel_after:
            return "cancelled"
        self.steps.append(step)
        if self.stop_after is not None and len(self.generated()) >= self.stop_after:
            return "stop"
        return None

    def end(self, finish, error=None):
        assert self.finish is None, "a request ends once"
        self.finish, self.error = finish, error

    def cancelled(self):
        return self.cancel_after == 0


def run_batched(backend, requests, *, max_batch=4, max_context=256):
    """Run ``requests`` through the scheduler; each is handed out once the scheduler has taken ``join_at`` turns."""
    assert backend.open_batch(max_batch, max_context) is not None
    sched = Scheduler(backend, max_batch)
    waiting = sorted(requests, key=lambda r: r.join_at)
    turn = [0]
    sizes = []

    def take(block):
        turn[0] += 1
        sizes.append(sched.last_batch)
        if not waiting:
            return CLOSED
        if waiting[0].join_at <= turn[0] or block:
            return waiting.pop(0)
        return None

    sched.run(take)
    for r in requests:
        assert r.finish is not None and r.error is None, r.error
    return sizes


def solo(backend, req):
    steps = []
    for s in generate(backend, req.prompt_ids, req.params):
        if req.cancel_after is not None and len([x for x in steps if not x.prompt]) >= req.cancel_after:
            break
        steps.append(s)
        if req.stop_after is not None and len([x for x in steps if not x.prompt]) >= req.stop_after:
            break
    return steps


def assert_same(batched, alone):
    assert [s.token_id for s in batched] == [s.token_id for s in alone]
    assert [(s.position, s.prompt, s.finish_reason) for s in batched] == [
        (s.position, s.prompt, s.finish_reason) for s in alone]
    for b, a in zip(batched, alone):
        np.testing.assert_array_equal(b.feature_ids, a.feature_ids)
        np.testing.assert_allclose(b.feature_values, a.feature_values, rtol=1e-4, atol=1e-6)
        assert (b.l0, b.filtered) == (a.l0, a.filtered)
        if a.logprob is None:
            assert b.logprob is None
        else:
            assert b.logprob == pytest.approx(a.logprob, rel=1e-4, abs=1e-5)
            assert [i for i, _ in b.top_logprobs] == [i for i, _ in a.top_logprobs]
            np.testing.assert_allclose([v for _, v in b.top_logprobs], [v for _, v in a.top_logprobs], rtol=1e-4,
                                       atol=1e-5)


def check(backend, requests, **kw):
    sizes = run_batched(backend, requests, **kw)
    for r in requests:
        alone = solo(backend, r)
        assert len(alone) > 0
        assert_same(r.steps, alone)
    return sizes


def test_different_prompt_lengths_joining_mid_way(loaded, prompts):
    backend, info, _ = loaded
    eos = frozenset(info.eos_token_ids)
    reqs = [Collect(prompts[0], GenerationParams(max_tokens=24)),
            Collect(prompts[1], GenerationParams(max_tokens=16, eos_token_ids=eos, prompt_features=True)),
            Collect(prompts[2], GenerationParams(max_tokens=20, eos_token_ids=eos), join_at=5),
            Collect(prompts[3], GenerationParams(max_tokens=9), join_at=11)]
    sizes = check(backend, reqs)
    assert max(sizes) >= 3, "requests should have decoded together"
    assert len(reqs[0].generated()) == 24 and len(reqs[3].generated()) == 9
    assert reqs[0].finish == reqs[3].finish == "length"
    assert backend.batch.rows == [], "every row left the batch"


def test_more_requests_than_rows_wait_for_a_free_row(loaded, prompts):
    backend, info, _ = loaded
    reqs = [Collect(prompts[i % 4], GenerationParams(max_tokens=6 + i)) for i in range(6)]
    sizes = check(backend, reqs, max_batch=2)
    assert max(sizes) == 2


def test_seeded_sampling_and_greedy_side_by_side(loaded, prompts):
    backend, _, _ = loaded
    reqs = [Collect(prompts[0], GenerationParams(max_tokens=20, temperature=0.9, top_p=0.9, seed=7)),
            Collect(prompts[1], GenerationParams(max_tokens=20)),
            Collect(prompts[2], GenerationParams(max_tokens=20, temperature=1.3, seed=11), join_at=3),
            Collect(prompts[0], GenerationParams(max_tokens=20, temperature=0.9, top_p=0.9, seed=8), join_at=4)]
    check(backend, reqs)
    assert [s.token_id for s in reqs[0].steps] != [s.token_id for s in reqs[3].steps], "seeds should differ"


def test_one_row_steered_its_neighbour_not(loaded, prompts):
    backend, _, _ = loaded
    steer = Steering((SteerFeature(3, "add", 40.0), SteerFeature(5, "clamp", 2.0)))
    late = Steering((SteerFeature(1, "ablate"),), positions="generated")
    reqs = [Collect(prompts[0], GenerationParams(max_tokens=16, steering=steer)),
            Collect(prompts[0], GenerationParams(max_tokens=16)),
            Collect(prompts[1], GenerationParams(max_tokens=16, steering=late), join_at=4)]
    check(backend, reqs)
    assert [s.token_id for s in reqs[0].steps] != [s.token_id for s in reqs[1].steps], "steering should change tokens"


def test_cancelled_eos_and_stopped_rows_leave_and_the_rest_are_unchanged(loaded, prompts):
    backend, info, _ = loaded
    plain = solo(backend, Collect(prompts[1], GenerationParams(max_tokens=12)))
    early = frozenset({plain[3].token_id})  # this request "ends" on its 4th token as EOS
    reqs = [Collect(prompts[0], GenerationParams(max_tokens=18), cancel_after=3),
            Collect(prompts[1], GenerationParams(max_tokens=12, eos_token_ids=early)),
            Collect(prompts[2], GenerationParams(max_tokens=18), stop_after=5),
            Collect(prompts[3], GenerationParams(max_tokens=18)),
            Collect(prompts[0], GenerationParams(max_tokens=10), join_at=8)]
    check(backend, reqs)
    assert [r.finish for r in reqs] == ["cancelled", "stop", "stop", "length", "length"]
    assert reqs[1].steps[-1].finish_reason == "stop" and len(reqs[1].generated()) <= 4


def test_logit_processing_and_logprobs_in_one_row(loaded, prompts):
    backend, _, _ = loaded
    reqs = [Collect(prompts[0], GenerationParams(max_tokens=14, logprobs=3, logit_bias=((5, 4.0), (9, -100.0)),
                                                  frequency_penalty=0.7, presence_penalty=0.3)),
            Collect(prompts[1], GenerationParams(max_tokens=14)),
            Collect(prompts[2], GenerationParams(max_tokens=14, logprobs=0, temperature=0.8, seed=3), join_at=2)]
    check(backend, reqs)
    assert reqs[0].steps[0].top_logprobs is not None and len(reqs[0].steps[0].top_logprobs) == 3


def test_chunked_prefill_interleaves_with_decode_steps(loaded, prompts):
    backend, _, _ = loaded
    backend.prefill_chunk = 5
    try:
        long_prompt = prompts[2] + prompts[0]
        reqs = [Collect(prompts[1], GenerationParams(max_tokens=30)),
                Collect(long_prompt, GenerationParams(max_tokens=10, prompt_features=True), join_at=2)]
        run_batched(backend, reqs)
        # the first request kept decoding while the long prompt was prefilled chunk by chunk
        chunks = -(-len(long_prompt) // 5)
        assert chunks > 3
        for r in reqs:
            assert_same(r.steps, solo(backend, r))
    finally:
        backend.prefill_chunk = 2048


def test_a_feature_filter_is_applied_per_row(loaded, prompts):
    backend, _, sae = loaded
    mask = np.ones(sae.d_sae, dtype=bool)
    mask[::3] = False
    backend.set_feature_filter(FeatureFilter(mask=mask, scale=np.linspace(0.5, 2.0, sae.d_sae).astype(np.float32)))
    try:
        reqs = [Collect(prompts[i], GenerationParams(max_tokens=10), join_at=i) for i in range(3)]
        check(backend, reqs)
        assert any(s.filtered > 0 for r in reqs for s in r.steps)
    finally:
        backend.set_feature_filter(FeatureFilter())


def test_batched_greedy_tokens_equal_a_full_recompute_by_transformers(loaded, prompts, tiny_fixture):
    from tests.support.reference import greedy_full_recompute

    backend, _, _ = loaded
    reqs = [Collect(prompts[i], GenerationParams(max_tokens=16), join_at=2 * i) for i in range(3)]
    run_batched(backend, reqs)
    for r in reqs:
        assert [s.token_id for s in r.steps] == greedy_full_recompute(tiny_fixture.model_dir, r.prompt_ids, 16)


def test_a_request_longer_than_the_context_fails_alone(loaded, prompts):
    backend, _, _ = loaded
    reqs = [Collect(prompts[0], GenerationParams(max_tokens=10)),
            Collect(prompts[2], GenerationParams(max_tokens=40), join_at=2)]
    backend.open_batch(2, len(prompts[2]) + 20)
    sched = Scheduler(backend, 2)
    queue = list(reqs)
    sched.run(lambda block: queue.pop(0) if queue else CLOSED)
    assert reqs[0].finish == "length" and reqs[0].error is None
    assert reqs[1].finish == "error" and "exceed the context" in reqs[1].error
    assert_same(reqs[0].steps, solo(backend, reqs[0]))


class _FailingStep:
    """The real backend, whose ``fail_at``-th batch step raises."""

    def __init__(self, backend, fail_at):
        self._backend, self.fail_at, self.calls = backend, fail_at, 0

    def batch_step(self):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("device lost")
        return self._backend.batch_step()

    def __getattr__(self, name):
        return getattr(self._backend, name)


def test_a_failed_step_ends_its_rows_with_an_error_and_the_next_request_runs(loaded, prompts):
    backend, _, _ = loaded
    assert backend.open_batch(4, 256) is not None
    failing = _FailingStep(backend, fail_at=4)
    sched = Scheduler(failing, 4)
    first = [Collect(prompts[0], GenerationParams(max_tokens=12)), Collect(prompts[1], GenerationParams(max_tokens=12))]
    later = Collect(prompts[2], GenerationParams(max_tokens=6))
    queue = list(first)
    sched.run(lambda block: queue.pop(0) if queue else CLOSED)
    assert [r.finish for r in first] == ["error", "error"]
    assert all("device lost" in r.error for r in first)
    assert backend.batch.rows == []
    # the batch was reset: the next request decodes as it does alone
    queue = [later]
    sched.run(lambda block: queue.pop(0) if queue else CLOSED)
    assert later.finish == "length" and later.error is None
    assert_same(later.steps, solo(backend, later))


def test_a_request_cancelled_during_its_chunked_prefill_ends_there(loaded, prompts):
    backend, _, _ = loaded
    backend.prefill_chunk = 4
    try:
        running = Collect(prompts[1], GenerationParams(max_tokens=16))
        gone = Collect(prompts[2] + prompts[0], GenerationParams(max_tokens=8, prompt_features=True), join_at=2,
                       cancel_after=0)
        chunks = []

        class Counting:
            def prefill_steps(self, *a, **kw):
                gen = backend.prefill_steps(*a, **kw)
                while True:
                    try:
                        next(gen)
                    except StopIteration as done:
                        return done.value
                    chunks.append(len(a[0]))
                    yield

            def __getattr__(self, name):
                return getattr(backend, name)

        run_batched(Counting(), [running, gone])
        assert gone.finish == "cancelled" and gone.steps == []
        long_chunks = [c for c in chunks if c == len(gone.prompt_ids)]
        assert 0 < len(long_chunks) < len(gone.prompt_ids) // 4 - 1, "the prefill should stop at its first chunk"
        assert running.finish == "length"
        assert_same(running.steps, solo(backend, running))
    finally:
        backend.prefill_chunk = 2048


def test_abort_ends_every_admitted_request_and_drops_the_batch(loaded, prompts):
    backend, _, _ = loaded
    assert backend.open_batch(4, 256) is not None
    sched = Scheduler(backend, 4)
    reqs = [Collect(prompts[0], GenerationParams(max_tokens=12)), Collect(prompts[1], GenerationParams(max_tokens=12))]
    queue = list(reqs)
    turns = [0]

    def take(block):
        turns[0] += 1
        if turns[0] == 5:
            raise RuntimeError("queue broke")
        return queue.pop(0) if queue else None

    with pytest.raises(RuntimeError, match="queue broke"):
        sched.run(take)
    assert len(backend.batch.rows) == 2 and all(r.finish is None for r in reqs)
    sched.abort(RuntimeError("queue broke"))
    assert [r.finish for r in reqs] == ["error", "error"] and backend.batch.rows == [] and sched.running == 0


def test_an_mlx_step_of_several_rows_is_one_graph_queued_once(loaded, prompts, monkeypatch):
    backend, _, _ = loaded
    if backend.name != "mlx":
        pytest.skip("MLX's evaluation calls")
    import mlx.core as mx

    assert backend.open_batch(4, 256) > 0
    keys = [object() for _ in range(3)]
    params = [GenerationParams(max_tokens=8, logprobs=2), GenerationParams(max_tokens=8, temperature=0.7, seed=1),
              GenerationParams(max_tokens=8)]
    for key, p, ids in zip(keys, params, prompts):
        gen = backend.prefill_steps(ids, p, joining=True)
        while True:
            try:
                next(gen)
            except StopIteration as done:
                backend.join(key, done.value)
                break
    calls = []
    for name in ("eval", "async_eval"):
        real = getattr(mx, name)
        monkeypatch.setattr(mx, name, lambda *a, _real=real, _name=name: (calls.append(_name), _real(*a))[1])
    step = backend.batch_step()
    assert calls == ["async_eval"], "one step: one graph, queued with one async_eval"
    out = backend.batch_to_host(step)
    assert [k for k, _ in out] == keys
    assert [len(rec) for _, rec in out] == [3 + 2 * K + 5, 3 + 2 * K, 3 + 2 * K]
    backend.reset_batch()
    assert backend.batch.rows == []
