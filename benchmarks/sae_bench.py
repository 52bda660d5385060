"""Per-token SAE micro-benchmark: JumpReLU encode + top-k of one residual vector, result copied to the host.

One call = what a backend does per generated token: ``x @ W_enc + b_enc``, the JumpReLU threshold, L0,
top-k ids and values, and one small copy of them to the host. The floor is the time to read ``W_enc`` once at
the bandwidth measured on the same device in the same run; a gemv of one token can do no better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from benchmarks import targets
from benchmarks.bandwidth import Bandwidth
from benchmarks.timing import summarize_ms, time_calls
from neuroscope.core.sae import SAEWeights, encode_reference, topk_reference

N_INPUTS = 16  # distinct residual vectors, cycled, so no call sees the previous call's input
RESIDUAL_STD = 3.0  # a Gemma-2 mid-layer residual is O(1..10) per coordinate; the timing does not depend on it


class Skip(Exception):
    """This (backend, dtype) pair cannot run here; the message says why."""


@dataclass
class Case:
    backend: str
    dtype: str  # storage dtype of W_enc: "float32" | "bfloat16"
    d_model: int
    d_sae: int
    k: int


@dataclass
class Runner:
    call: Callable[[int], object]  # call(i) processes input i % N_INPUTS and waits for the host copy
    impl: str  # what was timed, in words
    w_enc_bytes: int
    check: Callable[[int], tuple[np.ndarray, np.ndarray]]  # (ids, values) of input i, for the parity check


def _inputs(d_model: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N_INPUTS, d_model), dtype=np.float32) * RESIDUAL_STD).astype(np.float32)


# ----------------------------------------------------------------------------------------------- numpy
def _numpy_runner(sae: SAEWeights, case: Case, xs: np.ndarray) -> Runner:
    if case.dtype == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise Skip("numpy has no bfloat16 dtype (install ml_dtypes to include it)") from None
        sae = SAEWeights(sae.W_enc.astype(ml_dtypes.bfloat16), sae.b_enc, sae.threshold, sae.W_dec, sae.b_dec)

    def run(i: int):
        acts = encode_reference(sae, xs[i % N_INPUTS])
        return topk_reference(acts, case.k)

    return Runner(run, "neuroscope.core.sae.encode_reference + topk_reference", sae.W_enc.nbytes, run)


# ----------------------------------------------------------------------------------------------- torch
def _torch_runner(sae: SAEWeights, case: Case, xs: np.ndarray) -> Runner:
    import torch

    from backends.torch_sae import TorchSAE

    device = torch.device("cuda" if case.backend == "torch-cuda" else "cpu")
    x_dev = torch.from_numpy(xs).to(device)
    k = case.k
    tsae = TorchSAE(sae, device, top_k=k, dtype=case.dtype)

    def packed(i: int) -> np.ndarray:
        return tsae.topk(x_dev[i % N_INPUTS].view(1, -1)).cpu().numpy()[0]  # .cpu() waits for the device

    impl = f"backends.torch_sae.TorchSAE.topk (W_enc {case.dtype}) + .cpu()"
    nbytes = tsae.W_enc.numel() * tsae.W_enc.element_size()

    def check(i: int):
        rec = packed(i)
        return rec[2 : 2 + k].astype(np.int64), rec[2 + k :].astype(np.float32)  # [l0, filtered, ids, values]

    return Runner(packed, impl, nbytes, check)


# ----------------------------------------------------------------------------------------------- mlx
def _mlx_runner(sae: SAEWeights, case: Case, xs: np.ndarray) -> Runner:
    import mlx.core as mx

    try:
        from backends.mlx_sae import MLXSAE
    except ImportError:
        return _mlx_ops_runner(sae, case, xs)
    msae = MLXSAE(sae, top_k=case.k, dtype=case.dtype)
    x_all = mx.array(xs)
    mx.eval(x_all)
    k = msae.k

    def packed(i: int) -> np.ndarray:
        rec = msae.topk(x_all[i % N_INPUTS][None])
        mx.eval(rec)  # one evaluation per token, as the backend does
        return np.array(rec[0])

    def check(i: int):
        rec = packed(i)
        return rec[2 : 2 + k].astype(np.int64), rec[2 + k :].astype(np.float32)  # [l0, filtered, ids, values]

    return Runner(packed, f"backends.mlx_sae.MLXSAE.topk (W_enc {case.dtype}), one mx.eval", msae.W_enc.nbytes, check)


def _mlx_ops_runner(sae: SAEWeights, case: Case, xs: np.ndarray) -> Runner:
    """Plain mx ops, for an mlx install without Neuroscope's MLX backend."""
    import mlx.core as mx

    dt = mx.bfloat16 if case.dtype == "bfloat16" else mx.float32
    W = mx.array(sae.W_enc).astype(dt)  # [d_model, d_sae]: the transposed layout is much slower on CPU
    b, thr = mx.array(sae.b_enc), mx.array(sae.threshold)
    x_all = mx.array(xs)
    mx.eval(W, b, thr, x_all)
    k = case.k

    def run(i: int):
        x = x_all[i % N_INPUTS]
        pre = (x.astype(dt) @ W).astype(mx.float32) + b
        acts = mx.where(pre > thr, pre, mx.zeros_like(pre))
        l0 = (acts > 0).sum()
        top = mx.argpartition(-acts, kth=k - 1)[:k]
        vals = acts[top]
        order = mx.argsort(-vals)
        ids, vals = top[order], vals[order]
        mx.eval(ids, vals, l0)  # one evaluation per token
        return np.array(ids, dtype=np.int64), np.array(vals, dtype=np.float32)

    return Runner(run, "mlx ops (matmul, where, argpartition, take), one mx.eval per token", W.nbytes, run)


_RUNNERS = {"numpy": _numpy_runner, "torch-cpu": _torch_runner, "torch-cuda": _torch_runner, "mlx": _mlx_runner}


def _parity(runner: Runner, sae: SAEWeights, xs: np.ndarray, k: int, dtype: str) -> float:
    """Largest |value - reference| over the top-k of two inputs: a timed path that computes garbage fails."""
    worst = 0.0
    for i in range(2):
        ref = encode_reference(sae, xs[i])
        ids, vals = runner.check(i)
        if ids.shape != (k,) or vals.shape != (k,):
            raise AssertionError(f"top-k returned shapes {ids.shape}/{vals.shape}, expected ({k},)")
        worst = max(worst, float(np.max(np.abs(vals - ref[ids]))))
        ref_vals = np.sort(topk_reference(ref, k)[1])[::-1]
        worst = max(worst, float(np.max(np.abs(np.sort(vals)[::-1] - ref_vals))))
    tol = 1e-3 if dtype == "float32" else 0.1 * RESIDUAL_STD
    if worst > tol:
        raise AssertionError(f"top-k values differ from the numpy reference by {worst:.3g} (> {tol})")
    return worst


def run_case(
    case: Case,
    sae: SAEWeights,
    bandwidths: dict[str, Bandwidth],
    *,
    iters: int,
    warmup: int,
    budget_s: float,
) -> dict:
    xs = _inputs(case.d_model)
    runner = _RUNNERS[case.backend](sae, case, xs)
    max_err = _parity(runner, sae, xs, case.k, case.dtype)
    samples = time_calls(runner.call, iters=iters, warmup=warmup, budget_s=budget_s)
    stats = summarize_ms(samples)
    device = targets.device_of(case.backend)
    bw = bandwidths[device]
    floor_ms = runner.w_enc_bytes / (bw.gbps * 1e9) * 1e3
    return {
        "backend": case.backend,
        "device": targets.device_label(case.backend),
        "dtype": case.dtype,
        "d_model": case.d_model,
        "d_sae": case.d_sae,
        "k": case.k,
        "impl": runner.impl,
        **stats,
        "w_enc_bytes": runner.w_enc_bytes,
        "bandwidth_gbps": bw.gbps,
        "floor_ms": floor_ms,
        "x_floor": stats["median_ms"] / floor_ms,
        "effective_gbps": runner.w_enc_bytes / (stats["median_ms"] * 1e-3) / 1e9,
        "max_abs_err_vs_reference": max_err,
    }
