"""Corpus-pass benchmark: tokens/s of ``backend.corpus_pass`` (block-N forward + SAE encode + per-feature
statistics reduced on the device, copied to the host) against a bare forward of the same backend over the same
padded batches (the block-N forward alone, its output left on the device). The difference is what the SAE and
the statistics cost; the target is at most 15 % of the bare forward.

Both modes run the backend's own model (``block_output``, the forward the corpus pass uses) on identical
batches, interleaved repeat by repeat so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import gc
import time

import numpy as np

from benchmarks import targets
from benchmarks.models import BenchModel
from neuroscope.calibration import corpus_pass
from neuroscope.core.fixtures import _CORPUS
from neuroscope.core.protocol import CorpusBatch, ModelSpec

MODES = ("bare-forward", "corpus-pass")
SAMPLE_CHARS = 1500  # about what a corpus sample holds (neuroscope corpus build joins paragraphs up to ~1,500)


def texts(n: int) -> list[str]:
    """``n`` different texts of about ``SAMPLE_CHARS`` characters, cut from the fixture's varied paragraphs."""
    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    out = []
    for i in range(n):
        parts, size, j = [], 0, i
        while size < SAMPLE_CHARS:
            parts.append(lines[j % len(lines)])
            size += len(parts[-1]) + 1
            j += 3
        out.append(" ".join(parts)[:SAMPLE_CHARS])
    return out


def _bare(backend, name: str):
    """The same backend's block-N forward over a batch, synchronised, nothing else."""
    if name.startswith("torch"):
        import torch

        cuda = name == "torch-cuda"

        def run(batch: CorpusBatch) -> None:
            with torch.inference_mode():
                tokens = torch.from_numpy(batch.tokens.astype(np.int64)).to(backend.device)
                h = backend.model.block_output(tokens, backend.layer)
            if cuda:
                torch.cuda.synchronize()
            del h

        return run
    import mlx.core as mx

    def run_mlx(batch: CorpusBatch) -> None:
        mx.eval(backend.model.model.block_output(mx.array(batch.tokens), backend.layer))

    return run_mlx


def run_backend(name: str, bm: BenchModel, *, batch_size: int, max_tokens: int, batches: int, repeats: int,
                log=print) -> dict:
    from neuroscope.core import registry

    backend = registry.resolve(name)()
    info = backend.load(ModelSpec(str(bm.path), dtype=bm.dtype), bm.sae, bm.layer, top_k=10)
    try:
        tok = info.tokenizer
        samples = [corpus_pass.tokenize(tok, t, max_tokens) for t in texts(batch_size * batches)]
        skip, pad = corpus_pass.special_ids(tok), corpus_pass.pad_id(tok)
        work = [corpus_pass.make_batch(samples[i : i + batch_size], skip, pad)
                for i in range(0, len(samples), batch_size)]
        n_tokens = int(sum(b.lengths.sum() for b in work))
        bare = _bare(backend, name)
        runners = {"bare-forward": bare, "corpus-pass": backend.corpus_pass}
        bare(work[0])  # warm-up (compilation, allocator)
        first = backend.corpus_pass(work[0]).stats
        if first.tokens < 1 or not first.count.sum() > 0:
            raise AssertionError("the corpus pass counted no token or no firing feature")
        per_rep: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(repeats):
            for mode in MODES:
                t0 = time.perf_counter()
                for b in work:
                    runners[mode](b)
                per_rep[mode].append(time.perf_counter() - t0)
    finally:
        backend.close()
        gc.collect()
    modes = {}
    for mode in MODES:
        s = float(np.median(per_rep[mode]))
        modes[mode] = {"s_by_repeat": per_rep[mode], "seconds": s, "tokens_per_s": n_tokens / s}
    bare_r, pass_r = np.array(per_rep["bare-forward"]), np.array(per_rep["corpus-pass"])
    log(f"[corpus] {name}: {modes['corpus-pass']['tokens_per_s']:.0f} tok/s corpus pass, "
        f"{modes['bare-forward']['tokens_per_s']:.0f} tok/s bare forward")
    return {
        "backend": name,
        "device": targets.device_label(name),
        "model": bm.label,
        "dtype": bm.dtype,
        "sae_layer": bm.layer,
        "d_model": bm.sae.d_model,
        "d_sae": bm.sae.d_sae,
        "batch_size": batch_size,
        "max_tokens": max_tokens,
        "batches": len(work),
        "tokens": n_tokens,
        "repeats": repeats,
        "modes": modes,
        # (corpus pass - bare forward) / bare forward, median over repeats: what the SAE and statistics add
        "sae_stats_overhead": float(np.median((pass_r - bare_r) / bare_r)),
    }
