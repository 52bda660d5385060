"""The suites (smoke, default, full) and the run that measures bandwidth, the SAE and decode, then reports."""

from __future__ import annotations

import gc
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.console import Console

from benchmarks import bandwidth, concurrency, corpus_bench, decode_bench, machine, models, report, sae_bench, targets
from neuroscope.core import fixtures

GEMMA_D_MODEL = fixtures.SHAPES["gemma-2-2b"].hidden_size
TINY = fixtures.SHAPES["tiny"]
DECODE_BACKENDS = ("torch-cpu", "torch-cuda", "mlx")
BATCHING_BACKENDS = ("torch-cpu", "torch-cuda", "mlx")  # continuous batching: torch eager and compiled, MLX
MLX_CPU_BIG_ITERS = 10  # mlx[cpu] uses a reference BLAS: big shapes get a few iterations only
BUSY_CORES = 0.2  # other processes' average use above which a run is flagged as contended
BIG_MODEL_PARAMS = 100_000_000  # above this a model counts as big for a CPU
CPU_BIG_MODEL_TOKENS, CPU_BIG_MODEL_REPEATS = 16, 2  # a 2B-parameter model on a CPU: ~seconds per token
CPU_BIG_CORPUS = (2, 2, 128)  # batch size, batches, tokens per sample for a 2B-parameter model on a CPU


@dataclass
class Suite:
    name: str
    sae_shapes: list[tuple[int, int]]
    decode_shape: str | None  # "tiny" | "gemma-2-100m" | "gemma-2-2b" | None (no decode)
    sae_dtypes: tuple[str, ...] = ("float32", "bfloat16")
    sae_iters: int = 200
    sae_warmup: int = 5
    sae_budget_s: float = 3.0
    bw_cpu_bytes: int = 256 * 2**20
    bw_gpu_bytes: int = 1 << 30
    bw_reps: int = 5
    tokens: int = 64
    repeats: int = 5
    warmup_tokens: int = 8
    prompt_tokens: int | None = None  # None: the benchmark prompt as it is; n: exactly n tokens
    compiled: bool = True  # also the torch backends' compiled engine (--engine compiled)
    steering: bool = True  # the steered-1 / steered-16 decode modes
    decode_budget_s: float | None = 90.0  # per backend: repeats stop (after 3) once this is spent
    top_k: int = 10  # the server's default --top-k
    decode: bool = True  # the decode benchmark (on the model below)
    corpus: bool = True  # the corpus-pass benchmark (on the same model)
    corpus_batch_size: int = 8
    corpus_max_tokens: int = 256  # calibrate run's default --max-tokens-per-sample
    corpus_batches: int = 6
    corpus_repeats: int = 5
    concurrency: tuple[int, ...] = concurrency.CONCURRENCY  # requests at once in the concurrency table; () skips it
    model: str | None = None
    dtype: str | None = None
    layer: int | None = None
    d_sae_model: int = fixtures.SHAPES["gemma-2-2b"].d_sae
    backends: tuple[str, ...] = targets.ALL
    torch_threads: int | None = None  # None: as serve picks them (backends.torch_backend.cpu_threads)
    notes: list[str] = field(default_factory=list)


SUITES = {
    "smoke": Suite(
        "smoke", [(TINY.hidden_size, TINY.d_sae)], "tiny", sae_iters=5, sae_warmup=1, sae_budget_s=0.2,
        bw_cpu_bytes=16 * 2**20, bw_gpu_bytes=64 * 2**20, bw_reps=2, tokens=4, repeats=1, warmup_tokens=2,
        corpus_batch_size=2, corpus_max_tokens=32, corpus_batches=2, corpus_repeats=1, compiled=False,
        concurrency=(1, 2),
    ),
    "default": Suite(
        "default", [(TINY.hidden_size, TINY.d_sae), (GEMMA_D_MODEL, 16384)], "tiny", tokens=64, repeats=9,
        sae_budget_s=1.0, decode_budget_s=20.0, corpus_repeats=3,
    ),
    "full": Suite(
        "full", [(GEMMA_D_MODEL, 16384), (GEMMA_D_MODEL, 65536)], "gemma-2-2b", repeats=3, decode_budget_s=None,
        tokens=256, prompt_tokens=64,
        corpus_batches=4, corpus_repeats=3,
    ),
}


def run(suite: Suite, *, out_dir: Path, cache: Path, console: Console | None = None) -> tuple[dict, Path]:
    console = console or Console(width=None if _tty() else 150)
    log = lambda msg: console.log(msg)  # noqa: E731
    t_start = time.perf_counter()
    threads = _torch_threads(suite)
    if threads is not None:
        log(f"torch CPU threads: {threads}" + (" (--threads)" if suite.torch_threads else " (as serve picks them: "
                                                "one per core this process may use; --threads N to change)"))
    rec = report.new_record(suite.name, machine.describe(), _config(suite))
    whole = machine.OtherLoad().__enter__()
    usable = []
    for name in suite.backends:
        ok, why = targets.framework_status(name)
        if ok:
            usable.append(name)
        else:
            rec["skipped"].append({"backend": name, "reason": why})
            log(f"skip {name}: {why}")

    decode_names = [n for n in usable if n in DECODE_BACKENDS] if suite.decode_shape or suite.model else []
    devices = sorted({targets.device_of(n) for n in usable})
    for dev in devices:
        nbytes = suite.bw_cpu_bytes if dev == "cpu" else suite.bw_gpu_bytes
        log(f"bandwidth: {dev}")
        rec["bandwidth"].append(bandwidth.measure(dev, nbytes=nbytes, reps=suite.bw_reps))
    bws = {b.device: b for b in rec["bandwidth"]}
    rec["bandwidth"] = [b.to_json() for b in rec["bandwidth"]]

    for d_model, d_sae in suite.sae_shapes:
        sae = fixtures.random_sae(d_model, d_sae)
        for name in usable:
            for dtype in suite.sae_dtypes:
                case = sae_bench.Case(name, dtype, d_model, d_sae, suite.top_k)
                iters, budget = suite.sae_iters, suite.sae_budget_s
                if name == "mlx" and targets.device_of(name) == "cpu" and d_model * d_sae > 1 << 22:
                    iters, budget = min(iters, MLX_CPU_BIG_ITERS), float("inf")
                    _note(rec, log, f"mlx on the CPU uses a reference BLAS: {d_model}x{d_sae} capped at {iters} "
                                    "iterations; its figures say nothing about mlx on Metal or CUDA")
                log(f"sae: {name} {dtype} {d_model}x{d_sae}")
                try:
                    rec["sae"].append(sae_bench.run_case(case, sae, bws, iters=iters, warmup=suite.sae_warmup,
                                                         budget_s=budget))
                except sae_bench.Skip as exc:
                    rec["skipped"].append({"backend": name, "dtype": dtype, "d_sae": d_sae, "reason": str(exc)})
                    _note(rec, log, f"sae {name} {dtype}: skipped: {exc}")
        del sae
        gc.collect()

    if decode_names and (suite.decode or suite.corpus or suite.concurrency):
        bm = _model(suite, cache, log)
        big = bm.approx_params > BIG_MODEL_PARAMS
        for name in decode_names if suite.decode else []:
            on_cpu = targets.device_of(name) == "cpu"
            tokens, repeats = suite.tokens, suite.repeats
            if big and on_cpu and name == "mlx":
                rec["skipped"].append({"backend": name, "model": bm.label, "reason": "mlx[cpu] reference BLAS"})
                _note(rec, log, f"decode mlx {bm.label}: skipped on the CPU (mlx[cpu] uses a reference BLAS)")
                continue
            if big and on_cpu and (tokens > CPU_BIG_MODEL_TOKENS or repeats > CPU_BIG_MODEL_REPEATS):
                tokens, repeats = min(tokens, CPU_BIG_MODEL_TOKENS), min(repeats, CPU_BIG_MODEL_REPEATS)
                _note(rec, log, f"decode {name} {bm.label} on the CPU: capped at {tokens} tokens x {repeats} repeats")
            log(f"decode: {name} {bm.label} {bm.dtype}, {tokens} tokens x {repeats} repeats x "
                f"{len(decode_bench.MODES)} modes")
            with machine.OtherLoad() as other:
                row = decode_bench.run_backend(
                    name, bm, bws, n=tokens, repeats=repeats, warmup_tokens=suite.warmup_tokens, k=suite.top_k,
                    budget_s=suite.decode_budget_s, log=log, compiled=suite.compiled,
                    prompt_tokens=suite.prompt_tokens, steering=suite.steering,
                )
            row["other_processes_cores"] = other.cores
            if row["repeats"] < repeats:
                _note(rec, log, f"decode {name}: {row['repeats']} of {repeats} repeats fitted in the "
                                f"{suite.decode_budget_s:.0f} s budget")
            rec["decode"].append(row)

        for name in [n for n in decode_names if n in BATCHING_BACKENDS] if suite.concurrency else []:
            # on a GPU the compiled engine (CUDA graphs), as served there by default; eager on the CPU; MLX has one
            engine = "compiled" if suite.compiled and targets.device_of(name) == "cuda" else "eager"
            tokens = suite.tokens if not (big and targets.device_of(name) == "cpu") else CPU_BIG_MODEL_TOKENS
            log(f"concurrency: {name} {bm.label} ({engine}), {tokens} tokens per request, {suite.concurrency} at once")
            with machine.OtherLoad() as other:
                row = concurrency.run_backend(name, bm, decode_bench._prompt(bm, suite.prompt_tokens), tokens=tokens,
                                              k=suite.top_k, log=log, concurrency=suite.concurrency, engine=engine)
            row["other_processes_cores"] = other.cores
            rec.setdefault("concurrency", []).append(row)

        if suite.corpus:
            for name in decode_names:
                ours, why = targets.neuroscope_backend_status(name)
                if not ours:
                    rec["skipped"].append({"backend": name, "corpus": True, "reason": why})
                    continue
                on_cpu = targets.device_of(name) == "cpu"
                if big and on_cpu and name == "mlx":
                    rec["skipped"].append({"backend": name, "model": bm.label, "corpus": True,
                                           "reason": "mlx[cpu] reference BLAS"})
                    continue
                bs, batches, max_tokens = suite.corpus_batch_size, suite.corpus_batches, suite.corpus_max_tokens
                if big and on_cpu:
                    bs, batches, max_tokens = min(bs, CPU_BIG_CORPUS[0]), min(batches, CPU_BIG_CORPUS[1]), min(
                        max_tokens, CPU_BIG_CORPUS[2])
                    _note(rec, log, f"corpus {name} {bm.label} on the CPU: capped at {batches} batches of {bs} x "
                                    f"{max_tokens} tokens")
                log(f"corpus pass: {name} {bm.label}, {batches} batches of {bs} x {max_tokens} tokens x "
                    f"{suite.corpus_repeats} repeats x 2 modes")
                with machine.OtherLoad() as other:
                    row = corpus_bench.run_backend(name, bm, batch_size=bs, max_tokens=max_tokens, batches=batches,
                                                   repeats=suite.corpus_repeats, log=log)
                row["other_processes_cores"] = other.cores
                rec["corpus"].append(row)

    whole.__exit__(None, None, None)
    rec["machine"]["load_average_end"] = machine.load_average()
    rec["machine"]["other_processes_cores"] = whole.cores
    if whole.cores is not None and whole.cores > BUSY_CORES:
        _note(rec, log, f"other processes used {whole.cores:.2f} of {os.cpu_count()} CPU cores on average during "
                        "this run: CPU figures are slower and noisier than on an idle machine")
    rec["duration_s"] = time.perf_counter() - t_start
    report.print_all(console, rec)
    path = report.write(rec, out_dir)
    console.print(f"wrote {path} ({rec['duration_s']:.0f} s)")
    return rec, path


def _torch_threads(suite: Suite) -> int | None:
    """Set torch's CPU threads for the run, as ``serve`` picks them unless ``--threads`` says; None without torch."""
    try:
        import torch
        from backends.torch_backend import cpu_threads
    except ImportError:
        return None
    torch.set_num_threads(suite.torch_threads or cpu_threads())
    return torch.get_num_threads()


def _tty() -> bool:
    return Console().is_terminal


def _model(suite: Suite, cache: Path, log) -> models.BenchModel:
    if suite.model:
        return models.external(suite.model, suite.dtype, suite.d_sae_model, suite.layer)
    if suite.decode_shape == "gemma-2-2b":
        return models.gemma2_2b(cache, suite.dtype, suite.d_sae_model, log=log)
    if suite.decode_shape == "gemma-2-100m":
        return models.gemma2_100m(cache, suite.dtype, log=log)
    return models.tiny(cache, suite.dtype)


def _note(rec: dict, log, text: str) -> None:
    if text not in rec["notes"]:
        rec["notes"].append(text)
        log(text)


def _config(suite: Suite) -> dict:
    d = asdict(suite)
    d.pop("notes")
    d["sae_shapes"] = [list(s) for s in suite.sae_shapes]
    d["backends"] = list(suite.backends)
    return d


def customise(base: Suite, **over) -> Suite:
    return replace(base, **{k: v for k, v in over.items() if v is not None})
