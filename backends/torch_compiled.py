"""``--engine compiled``: the decode step (:func:`backends.torch_step.decode_step`) under ``torch.compile``.

``fullgraph=True`` and ``dynamic=False``: one static graph per KV-cache length bucket (powers of two, see
:func:`backends.torch_gemma2.cache_size`), so a request whose prompt and ``max_tokens`` land in a bucket
already compiled reuses its graph; capture off (the benchmarks' baseline) and logprobs on are graphs of
their own, compiled on first use. On CUDA the mode is ``reduce-overhead``: CUDA graphs (cudagraph trees)
replay the whole step in one launch. A CUDA graph reads and writes fixed addresses, so every tensor the step
reads or mutates outside its parameters is engine-owned and marked static: one KV cache per bucket (zeroed
for each request, never reallocated), one :class:`~backends.torch_step.StepInputs` rewritten in place per
request, the SAE weights and filter buffers. In-place writes to static inputs (the cache's ``index_copy_``,
the token / position / counts updates) are what cudagraph trees support without skipping ("mutated inputs").
A CUDA graph's output is overwritten by its next replay, so each record is cloned (one small copy) before
the next step is queued. The compiled code is process-wide, the CUDA graphs are per thread (cudagraph trees keep
thread-local managers): a warm-up on the main thread compiles, the generation thread records its own graph in its
first steps.

The static buffers belong to one request at a time (``--max-batch 1``: the server decodes one request at a time);
a state whose buffers a newer request has taken is refused rather than silently decoded from the newer request's
cache. Under continuous batching (:mod:`backends.torch_batch`) the batch's cache and per-row inputs are the static
buffers instead, and the batched step compiles once per (batch bucket 1, 2, 4, 8..., KV-length bucket).
"""

from __future__ import annotations

import os
import time
from typing import Callable

import torch

from backends.torch_gemma2 import Gemma2, KVCache
from backends.torch_sae import TorchSAE
from backends.torch_step import StepInputs, decode_step
from neuroscope.core.protocol import BackendError, GenerationParams
from neuroscope.store import paths

ENGINES = ("eager", "compiled")
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
RECOMPILE_LIMIT = 64  # graphs per step function: buckets x (capture on / off) x (logprobs on / off)


def use_neuroscope_inductor_cache() -> str:
    """Point inductor's on-disk cache under the Neuroscope cache unless the user chose one; returns it.

    Importing ``torch._dynamo`` (transformers does) writes torch's default, ``<tmp>/torchinductor_<user>``,
    into the environment, so that value counts as not chosen."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get(INDUCTOR_CACHE_ENV)
    if not current or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        path = paths.inductor_dir()
        path.mkdir(parents=True, exist_ok=True)
        os.environ[INDUCTOR_CACHE_ENV] = str(path)
    return os.environ[INDUCTOR_CACHE_ENV]


def compile_mode(device: torch.device) -> str | None:
    """``reduce-overhead`` (CUDA graphs) on CUDA; inductor's default elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else None


class CompiledStep:
    """The compiled decode step with its static buffers: one KV cache per length bucket, one StepInputs."""

    def __init__(self, model: Gemma2, sae: TorchSAE, device: torch.device):
        use_neuroscope_inductor_cache()
        if torch._dynamo.config.recompile_limit < RECOMPILE_LIMIT:
            torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
        self.model, self.sae, self.device = model, sae, device
        self.cudagraphs = device.type == "cuda"
        self.mode = compile_mode(device)
        self.fn: Callable[..., torch.Tensor] = torch.compile(decode_step, fullgraph=True, dynamic=False,
                                                             mode=self.mode)
        with torch.inference_mode():
            self.inputs = StepInputs.allocate(sae, model.cfg.vocab_size)
        self._caches: dict[int, KVCache] = {}
        self.min_size = 0  # the warmed-up bucket: shorter requests use it rather than compile a smaller one
        self.owner: object | None = None
        for t in [*sae.static_tensors(), *self.inputs.tensors(), *model.static_tensors()]:
            torch._dynamo.mark_static_address(t)

    # ------------------------------------------------------------------------------------------ batching
    def adopt_batch(self, batch) -> None:
        """A :class:`backends.torch_batch.TorchBatch`'s cache and inputs become static inputs of the batched graphs."""
        from backends.torch_batch import batch_step

        if getattr(self, "batch_fn", None) is None:
            self.batch_fn = torch.compile(batch_step, fullgraph=True, dynamic=False, mode=self.mode)
        for t in [*batch.cache.keys, *batch.cache.values, batch.cache.key_positions,
                  *(getattr(batch.inputs, f) for f in batch.inputs.__dataclass_fields__)]:
            torch._dynamo.mark_static_address(t)

    @staticmethod
    def bucket(rows: int, max_batch: int) -> int:
        """The batch bucket of ``rows`` active rows: the next power of two, at most ``max_batch``."""
        return min(max_batch, 1 << max(0, rows - 1).bit_length())

    def batch(self, batch, rows: int, size: int, layer: int, capture: bool, logprobs: bool) -> torch.Tensor:
        """One compiled step of the batch's first ``rows`` rows, run as its bucket (the rows past ``rows`` are free:
        their results are dropped, their position is reset to 0 first so their cache writes stay in range). Every
        op runs for every row (no skips): one graph per (bucket, ``size``, capture, logprobs)."""
        b = self.bucket(rows, batch.max_batch)
        if b > rows:
            batch.inputs.position[rows:b].zero_()
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        record = self.batch_fn(self.model, self.sae, batch.inputs, batch.cache, b, size, layer, capture, logprobs,
                               steering=True, processing=True, sampling=True)
        return record.clone() if self.cudagraphs else record

    @torch.inference_mode()
    def warm_up_batch(self, batch, size: int, layer: int) -> float:
        """Compile every batch bucket's instrumented graph at KV length ``size`` (longer lengths compile on first
        use); returns the seconds spent. Only free rows are touched: a row's inputs are rewritten when it joins."""
        t0 = time.perf_counter()
        b = 1
        while True:
            b = self.bucket(b, batch.max_batch)
            self.batch(batch, b, size, layer, True, False)
            if b >= batch.max_batch:
                break
            b *= 2
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def describe(self) -> str:
        return "torch.compile, CUDA graphs" if self.cudagraphs else "torch.compile, inductor"

    def take(self, size: int) -> tuple[KVCache, StepInputs, object]:
        """The cache of bucket ``size`` — or of the warmed-up bucket when that is longer: attending over a longer
        cache costs a request little, a compile in its way costs seconds — zeroed, the inputs for a new request
        and its ownership token."""
        size = max(size, self.min_size)
        cache = self._caches.get(size)
        if cache is None:
            with torch.inference_mode():
                cache = self.model.new_cache(size)
            for t in [*cache.keys, *cache.values, cache.key_positions]:
                torch._dynamo.mark_static_address(t)
            self._caches[size] = cache
        else:
            for t in (*cache.keys, *cache.values):
                t.zero_()
        self.owner = object()
        return cache, self.inputs, self.owner

    def check_owner(self, owner: object) -> None:
        if owner is not self.owner:
            raise BackendError("this request's decode buffers were taken by a newer request (the compiled "
                               "engine decodes one request at a time)")

    def __call__(self, cache: KVCache, layer: int, capture: bool, logprobs: bool) -> torch.Tensor:
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        record = self.fn(self.model, self.sae, self.inputs, cache, layer, capture, logprobs)
        return record.clone() if self.cudagraphs else record  # the next replay overwrites a graph's output

    @torch.inference_mode()
    def warm_up(self, size: int, layer: int, steps: int = 3) -> float:
        """Compile (and on CUDA record) the instrumented graph of bucket ``size``; returns the seconds spent.
        The bucket's cache is left zeroed for the next request."""
        t0 = time.perf_counter()
        self.min_size = max(self.min_size, size)
        cache, inputs, _ = self.take(size)
        inputs.load(GenerationParams(max_tokens=1), None)
        inputs.token.zero_()
        inputs.position.zero_()
        for _ in range(steps):
            self(cache, layer, True, False)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        for t in (*cache.keys, *cache.values):
            t.zero_()
        self.owner = None
        return time.perf_counter() - t0
