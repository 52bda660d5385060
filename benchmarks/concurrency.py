"""Concurrent requests: aggregate tokens/s and per-request inter-token latency at 1, 2, 4 and 8 requests at once,
``--max-batch 8`` (continuous batching, :class:`neuroscope.core.decode.Scheduler`) beside ``--max-batch 1`` (one
request at a time, :func:`neuroscope.core.decode.generate`, as the server runs it then).

Every request arrives at once, is greedy, instrumented (SAE encode + top-k in every step) and asks for ``tokens``
new tokens. A request's inter-token latencies are the gaps between its consecutive tokens (its first token, which
waits for its prefill and for the requests queued before it, is not a gap); p50 / p95 are over every gap of every
request. Aggregate tokens/s is all tokens over the wall time from the first arrival to the last token. Measured at
the generation thread (no HTTP), on the backends that batch (torch and MLX).

One run of a lone request is too short to tell a few percent apart on a shared machine, so the single stream is
also compared on its own (``single_stream``): ``SINGLE_STREAM_RUNS`` runs of one request under each setting,
alternating, each run's time per token (its last token's time less its first's over the gaps), the median over
the runs, and the ratio of ``--max-batch 8`` to ``--max-batch 1``.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.models import BenchModel
from neuroscope.core.decode import CLOSED, Scheduler, generate
from neuroscope.core.protocol import GenerationParams, ModelSpec

CONCURRENCY = (1, 2, 4, 8)
MAX_BATCH = 8
WARM_UP_TOKENS = 8
SINGLE_STREAM_RUNS = 9


class _Timed:
    def __init__(self, prompt_ids: list[int], params: GenerationParams):
        self.prompt_ids, self.params, self.times, self.finish = prompt_ids, params, [], None

    def step(self, step) -> None:
        if not step.prompt:
            self.times.append(time.perf_counter())
        return None

    def end(self, finish: str, error: str | None = None) -> None:
        if error:
            raise RuntimeError(error)
        self.finish = finish


def _summary(reqs: list[_Timed], t0: float) -> dict:
    gaps = np.concatenate([np.diff(r.times) for r in reqs if len(r.times) > 1] or [np.zeros(0)])
    total = sum(len(r.times) for r in reqs)
    wall = max(r.times[-1] for r in reqs) - t0
    return {"requests": len(reqs), "tokens": total, "wall_s": wall, "tokens_per_s": total / wall,
            "itl_p50_ms": float(np.percentile(gaps, 50) * 1e3) if gaps.size else None,
            "itl_p95_ms": float(np.percentile(gaps, 95) * 1e3) if gaps.size else None}


def _solo(backend, reqs: list[_Timed]) -> float:
    t0 = time.perf_counter()
    for r in reqs:
        for s in generate(backend, r.prompt_ids, r.params):
            r.step(s)
    return t0


def _batched(backend, reqs: list[_Timed], max_batch: int) -> float:
    sched = Scheduler(backend, max_batch)
    queue = list(reqs)
    t0 = time.perf_counter()
    sched.run(lambda block: queue.pop(0) if queue else CLOSED)
    return t0


def _single_stream(backend, prompt: list[int], params: GenerationParams, runs: int) -> dict:
    """``runs`` lone requests under each of ``--max-batch 1`` and ``8``, alternating: median ms per token."""
    per_token: dict[int, list[float]] = {1: [], MAX_BATCH: []}
    for i in range(runs):
        for max_batch in (1, MAX_BATCH) if i % 2 == 0 else (MAX_BATCH, 1):
            r = _Timed(prompt, params)
            _solo(backend, [r]) if max_batch == 1 else _batched(backend, [r], max_batch)
            per_token[max_batch].append((r.times[-1] - r.times[0]) / (len(r.times) - 1) * 1e3)
    one, eight = (float(np.median(per_token[m])) for m in (1, MAX_BATCH))
    return {"runs": runs, "max_batch_1_ms": one, "max_batch_8_ms": eight, "ratio": eight / one}


def run_backend(name: str, bm: BenchModel, prompt: list[int], *, tokens: int, k: int, log=print,
                concurrency: tuple[int, ...] = CONCURRENCY, engine: str = "eager",
                single_stream_runs: int = SINGLE_STREAM_RUNS) -> dict:
    """One backend's table rows: for each max-batch (1, 8) and each concurrency, the figures of :func:`_summary`."""
    from neuroscope.core import registry

    backend = registry.resolve(name)()
    if hasattr(backend, "engine"):
        backend.engine = engine
    backend.load(ModelSpec(str(bm.path), dtype=bm.dtype), bm.sae, bm.layer, top_k=k)
    if engine == "compiled":
        backend.warm_up(len(prompt) + tokens)  # the --max-batch 1 graph
    try:
        if backend.open_batch(MAX_BATCH, len(prompt) + max(tokens, WARM_UP_TOKENS)) is None:
            raise RuntimeError(f"{name} does not batch")
        params = GenerationParams(max_tokens=tokens)
        _solo(backend, [_Timed(prompt, GenerationParams(max_tokens=WARM_UP_TOKENS))])  # warm-up
        _batched(backend, [_Timed(prompt, GenerationParams(max_tokens=WARM_UP_TOKENS)) for _ in range(2)], MAX_BATCH)
        rows = []
        for max_batch in (1, MAX_BATCH):
            for c in concurrency:
                reqs = [_Timed(prompt, params) for _ in range(c)]
                t0 = _solo(backend, reqs) if max_batch == 1 else _batched(backend, reqs, max_batch)
                row = {"max_batch": max_batch, "concurrent": c, **_summary(reqs, t0)}
                log(f"concurrency: {name} --max-batch {max_batch}, {c} at once: {row['tokens_per_s']:.0f} tok/s")
                rows.append(row)
        single = _single_stream(backend, prompt, params, single_stream_runs) if tokens > 1 else None
        if single is not None:
            log(f"concurrency: {name} single stream, median of {single['runs']} alternating runs: --max-batch 8 "
                f"{single['max_batch_8_ms']:.3f} ms/token, --max-batch 1 {single['max_batch_1_ms']:.3f} "
                f"(x{single['ratio']:.3f})")
        return {"backend": name, "model": bm.label, "dtype": bm.dtype, "engine": engine, "tokens": tokens,
                "rows": rows, "single_stream": single}
    finally:
        backend.close()
