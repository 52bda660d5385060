"""Continuous batching at the edges of a step: a lone row (the solo step on its row's storage), the batch growing
from one row to two and shrinking back, and a prefilled request whose sliding-window ring has wrapped joining the
batch. Every request decodes exactly as it does alone (:func:`tests.backend.test_batching.assert_same`)."""

from __future__ import annotations

import numpy as np
import pytest

from neuroscope.core.protocol import GenerationParams
from tests.backend.test_batching import Collect, assert_same, loaded, prompts, run_batched, solo  # noqa: F401


class _Steps:
    """Counts an MLX batch's steps by kind: lone-row steps (``row_caches``) and batched forwards."""

    def __init__(self, monkeypatch, backend):
        self.lone = self.batched = 0
        if backend.name != "mlx":
            return
        from backends.mlx_batch import MLXBatch

        real_rows, real_forward = MLXBatch.row_caches, MLXBatch.forward

        def row_caches(batch, *a):
            self.lone += 1
            return real_rows(batch, *a)

        def forward(batch, *a):
            self.batched += 1
            return real_forward(batch, *a)

        monkeypatch.setattr(MLXBatch, "row_caches", row_caches)
        monkeypatch.setattr(MLXBatch, "forward", forward)


class _Sizes:
    """The real backend, recording the rows of every batch step."""

    def __init__(self, backend):
        self._backend, self.sizes = backend, []

    def batch_step(self):
        self.sizes.append(len(self._backend.batch.rows))
        return self._backend.batch_step()

    def __getattr__(self, name):
        return getattr(self._backend, name)


def _lone_then_two_then_lone(sizes):
    two = [i for i, s in enumerate(sizes) if s >= 2]
    assert two, sizes
    assert 1 in sizes[: two[0]] and 1 in sizes[two[-1]:], f"expected 1, then 2, then 1 row per step: {sizes}"


@pytest.mark.parametrize("first_leaves", [False, True], ids=["second-leaves", "first-leaves"])
def test_a_lone_row_a_request_joining_it_and_the_row_left_alone_decode_as_alone(loaded, prompts, monkeypatch,
                                                                                 first_leaves):
    """The first request runs alone (its ring wraps), a second joins and reads its neighbour's cache as the lone
    steps wrote it, then one of them leaves and the other runs alone again on what the batched steps wrote (from
    row 0, or moved there from row 1 when the first one leaves)."""
    backend, _, _ = loaded
    steps = _Steps(monkeypatch, backend)
    if first_leaves:
        reqs = [Collect(prompts[3], GenerationParams(max_tokens=12)),
                Collect(prompts[0], GenerationParams(max_tokens=28, temperature=0.8, seed=5, logprobs=2), join_at=5)]
    else:
        reqs = [Collect(prompts[2], GenerationParams(max_tokens=30, prompt_features=True)),
                Collect(prompts[1], GenerationParams(max_tokens=8, frequency_penalty=0.5), join_at=6)]
    counted = _Sizes(backend)
    run_batched(counted, reqs, max_batch=4)
    _lone_then_two_then_lone(counted.sizes)
    for r in reqs:
        assert r.finish == "length"
        assert_same(r.steps, solo(backend, r))
    if backend.name == "mlx":  # every lone step ran the solo step on the row, every shared one the batched step
        assert steps.lone >= 8 and steps.batched >= 5, (steps.lone, steps.batched)
        assert (steps.lone, steps.batched) == (counted.sizes.count(1), len(counted.sizes) - counted.sizes.count(1))
        assert max(counted.sizes) == 2


@pytest.mark.parametrize("chunk", [5, 23, 64, 2048])
def test_a_request_whose_ring_has_wrapped_joins_exactly(loaded, prompts, chunk):
    """A 70-token prompt (the tiny model's window is 16) prefilled in chunks of 5 (many wraps), 23 (the last chunk
    is one token), 64 (a chunk longer than the window) and all at once joins next to a running request."""
    backend, info, _ = loaded
    assert len(prompts[2]) == 70 and info.sliding_window == 16
    backend.prefill_chunk = chunk
    try:
        reqs = [Collect(prompts[1], GenerationParams(max_tokens=24)),
                Collect(prompts[2], GenerationParams(max_tokens=14, prompt_features=True), join_at=3)]
        sizes = run_batched(backend, reqs)
        assert max(sizes) == 2
        for r in reqs:
            assert_same(r.steps, solo(backend, r))
    finally:
        backend.prefill_chunk = 2048


@pytest.mark.parametrize("chunks", [[70], [5] * 14, [23, 23, 23, 1], [1] * 20, [3, 1, 1, 40, 2, 1, 17]])
def test_the_window_cache_returns_what_mlx_lms_rotating_cache_returns_and_keeps_the_ring_layout(chunks):
    """A joining request's local-layer cache: for every chunk of several tokens the keys and values the model
    attends over are exactly mlx-lm's ``RotatingKVCache``'s (so its prefill is the solo one); after every update
    slot p mod size holds position p; one token attends over the same set of positions as with mlx-lm's cache."""
    mx = pytest.importorskip("mlx.core")
    from mlx_lm.models.cache import RotatingKVCache

    from backends.mlx_batch import WindowCache

    size, total = 16, sum(chunks)
    keys = mx.arange(total * 2 * 3, dtype=mx.float32).reshape(1, 2, total, 3)  # key of position p: a known value
    values = -keys
    ours, theirs = WindowCache(size), RotatingKVCache(max_size=size)
    at = 0
    for S in chunks:
        k, v = keys[..., at: at + S, :], values[..., at: at + S, :]
        got, want = ours.update_and_fetch(k, v), theirs.update_and_fetch(k, v)
        at += S
        assert ours.offset == theirs.offset == at
        if S > 1:
            for g, w in zip(got, want):
                np.testing.assert_array_equal(np.array(g), np.array(w))
        else:  # the same positions, in the ring's order
            for g, w in zip(got, want):
                assert sorted(map(tuple, np.array(g)[0, 0])) == sorted(map(tuple, np.array(w)[0, 0]))
        ring = np.array(ours.keys)[0]
        for p in range(max(0, at - size), at):
            np.testing.assert_array_equal(ring[:, p % size], np.array(keys)[0, :, p])


class _DroppedRecord:
    """The real backend, whose ``at``-th step returns no record for its last row."""

    def __init__(self, backend, at):
        self._backend, self.at, self.calls = backend, at, 0

    def batch_to_host(self, step):
        self.calls += 1
        out = self._backend.batch_to_host(step)
        return out[:-1] if self.calls == self.at else out

    def __getattr__(self, name):
        return getattr(self._backend, name)


def test_a_step_that_returns_too_few_records_ends_its_rows_with_an_error(loaded, prompts):
    """A row that got no record would wait for it forever: the step's rows end with an error instead, and the
    scheduler goes on to the next request."""
    from neuroscope.core.decode import CLOSED, Scheduler

    backend, _, _ = loaded
    assert backend.open_batch(4, 256) is not None
    dropping = _DroppedRecord(backend, at=3)
    sched = Scheduler(dropping, 4)
    reqs = [Collect(prompts[0], GenerationParams(max_tokens=12)), Collect(prompts[1], GenerationParams(max_tokens=12))]
    queue = list(reqs)
    sched.run(lambda block: queue.pop(0) if queue else CLOSED)
    assert [r.finish for r in reqs] == ["error", "error"]
    assert all("records for a step of 2 rows" in r.error for r in reqs)
    assert backend.batch.rows == [] and sched.running == 0
    later = Collect(prompts[2], GenerationParams(max_tokens=6))
    queue = [later]
    sched.run(lambda block: queue.pop(0) if queue else CLOSED)
    assert later.finish == "length"
    assert_same(later.steps, solo(backend, later))
