"""Decode benchmark: ms/token for the same model and prompt in six modes, measured in one run.

- ``bare``: the framework with no Neuroscope at all (transformers ``generate``, greedy; mlx-lm
  ``generate_step``, the token loop under its ``generate``/``stream_generate``);
- ``capture-off``: Neuroscope's backend with ``backend.capture = False`` (plain decoding through our loop);
- ``instrumented``: Neuroscope's backend as the server runs it (residual capture + SAE encode + top-k), no
  feature filter (``--feature-filter none``);
- ``filtered``: the same with the ``combined`` filter of a synthetic calibration (a frequency mask and the
  surprise scale applied on the device before top-k, the masked count in the record): the serve default;
- ``steered-1`` / ``steered-16``: instrumented, with 1 and 16 steered features (add and clamp alternating;
  the cost does not depend on the mode: every feature's activation is read and its delta applied);
- ``compiled-capture-off`` / ``compiled``: the torch backends under ``--engine compiled`` (the same decode step
  under ``torch.compile``; CUDA graphs on a GPU), without and with the SAE: the other modes run the eager engine.

Each run generates ``n`` tokens after a warm-up; modes are interleaved repeat by repeat so drift on a shared
machine hits them all alike. ms/token is the time from the first generated token to the last over ``n - 1``.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

import numpy as np

from benchmarks import targets
from benchmarks.bandwidth import Bandwidth
from benchmarks.models import BenchModel
from benchmarks.timing import summarize_ms
from neuroscope.core.decode import generate
from neuroscope.core.protocol import GenerationParams, ModelSpec, SteerFeature, Steering

MODES = ("bare", "capture-off", "instrumented", "filtered", "steered-1", "steered-16", "compiled-capture-off",
         "compiled")
COMPILED_MODES = ("compiled-capture-off", "compiled")
STEERED = {"steered-1": 1, "steered-16": 16}
MIN_REPEATS = 3

Runner = Callable[[list[int], int], list[float]]  # (prompt ids, n) -> a timestamp per generated token


# ----------------------------------------------------------------------------------------------- bare frameworks
def _dtype_kwarg(dtype) -> dict:
    """transformers 4.56 renamed ``torch_dtype=`` to ``dtype=`` (and older releases take ``dtype`` as config)."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}


class TorchBare:
    """transformers ``generate`` (greedy, KV cache), eager attention and dtype as Neuroscope loads it."""

    def __init__(self, bm: BenchModel, device: str):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[bm.dtype]
        lm = AutoModelForCausalLM.from_pretrained(str(bm.path), attn_implementation="eager", **_dtype_kwarg(dtype))
        lm.to(device).eval()
        lm.generation_config.eos_token_id = None  # always generate exactly n tokens, like the other modes
        self.lm, self.device = lm, device
        self.weight_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())

    def __call__(self, ids: list[int], n: int) -> list[float]:
        torch = self.torch
        stamps: list[float] = []

        class Streamer:  # transformers calls put() with the prompt, then with each new token (on the host)
            def put(self, value):
                stamps.append(time.perf_counter())

            def end(self):
                pass

        x = torch.tensor([ids], device=self.device)
        with torch.inference_mode():
            out = self.lm.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                pad_token_id=0, streamer=Streamer(),
            )
        assert out.shape[1] == len(ids) + n, f"transformers generated {out.shape[1] - len(ids)} tokens, wanted {n}"
        return stamps[1:]

    def close(self):
        self.lm = None


class MlxBare:
    """mlx-lm ``generate_step`` (greedy by default) on the model loaded by ``mlx_lm.load``."""

    def __init__(self, bm: BenchModel):
        import mlx.core as mx
        import mlx_lm
        from mlx.utils import tree_flatten

        self.mx = mx
        model, _ = mlx_lm.load(str(bm.path))
        want = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}[bm.dtype]
        params = tree_flatten(model.parameters())
        if any(v.dtype != want for _, v in params):
            model.set_dtype(want)
            params = tree_flatten(model.parameters())
        self.model = model
        self.weight_bytes = sum(v.nbytes for _, v in params)

    def __call__(self, ids: list[int], n: int) -> list[float]:
        from mlx_lm.generate import generate_step

        stamps = []
        for _tok, _ in generate_step(self.mx.array(ids), self.model, max_tokens=n):
            stamps.append(time.perf_counter())
        return stamps

    def close(self):
        self.model = None


# ----------------------------------------------------------------------------------------------- Neuroscope
def synthetic_filter(d_sae: int, seed: int = 0):
    """The ``combined`` filter of a made-up calibration (firing rates spread over [0, 1], some above the 0.5
    threshold): its cost on the device does not depend on the values."""
    from neuroscope.calibration.filters import build
    from neuroscope.calibration.stats import Calibration

    rng = np.random.default_rng(seed)
    rate = (rng.random(d_sae) ** 3).tolist()
    data = {"d_sae": d_sae, "tokens": 100_000, "features": {"firing_rate": rate, "max": (1 + rng.random(d_sae) * 9)
                                                             .tolist(), "mean": [0.0] * d_sae, "std": [0.0] * d_sae}}
    return build("combined", Calibration(path="synthetic", data=data)).feature_filter  # type: ignore[arg-type]


class Ours:
    """A Neuroscope backend through the registry, toggled between capture on and off, filter on and off."""

    def __init__(self, name: str, bm: BenchModel, k: int, engine: str | None = None, warm_up_tokens: int = 0):
        from neuroscope.core import registry
        from neuroscope.core.protocol import FeatureFilter

        self.backend = registry.resolve(name)()
        if engine is not None:
            self.backend.engine = engine
        self.info = self.backend.load(ModelSpec(str(bm.path), dtype=bm.dtype), bm.sae, bm.layer, top_k=k)
        # the compiled engine's start-up compile of the instrumented graph (0 for the eager engine)
        warm = getattr(self.backend, "warm_up", None)
        self.compile_s = warm(warm_up_tokens) if warm is not None and engine == "compiled" else None
        self.none = FeatureFilter()
        self.combined = synthetic_filter(bm.sae.d_sae)

    def runner(self, capture: bool, steering: Steering | None = None, filtered: bool = False) -> Runner:
        def run(ids: list[int], n: int) -> list[float]:
            self.backend.capture = capture
            self.backend.set_feature_filter(self.combined if filtered else self.none)
            stamps, l0s, hidden = [], [], 0
            params = GenerationParams(max_tokens=n, temperature=0.0, steering=steering)
            for step in generate(self.backend, ids, params):
                stamps.append(time.perf_counter())
                l0s.append(step.l0)
                hidden += step.filtered
            if capture and not any(l0s):
                raise AssertionError("instrumented decode reported no firing feature on any token")
            if filtered and not hidden:
                raise AssertionError("the combined filter hid no feature on any token")
            return stamps

        return run

    def close(self):
        self.backend.close()


def bench_steering(m: int, d_sae: int) -> Steering:
    """m features spread over the SAE, add and clamp alternating, values of the size a user would pick."""
    step = max(1, d_sae // m)
    return Steering(tuple(
        SteerFeature(i * step, "add", 4.0) if i % 2 == 0 else SteerFeature(i * step, "clamp", 2.0) for i in range(m)
    ))


# ----------------------------------------------------------------------------------------------- measurement
def _measure(
    runners: dict[str, Runner], ids: list[int], n: int, repeats: int, warmup_tokens: int, budget_s: float | None
) -> dict[str, dict]:
    for run in runners.values():
        run(ids, max(2, min(n, warmup_tokens)))
    start = time.perf_counter()
    per_rep: dict[str, list[float]] = {m: [] for m in runners}
    prefill: dict[str, list[float]] = {m: [] for m in runners}
    intervals: dict[str, list[float]] = {m: [] for m in runners}
    for rep in range(repeats):
        if budget_s is not None and rep >= MIN_REPEATS and time.perf_counter() - start > budget_s:
            break  # a contended machine: keep the run bounded, the record says how many repeats ran
        for mode, run in runners.items():
            t0 = time.perf_counter()
            stamps = run(ids, n)
            if len(stamps) != n:
                raise AssertionError(f"{mode}: got {len(stamps)} tokens, wanted {n}")
            prefill[mode].append(stamps[0] - t0)
            per_rep[mode].append((stamps[-1] - stamps[0]) / (n - 1))
            intervals[mode].extend(np.diff(stamps).tolist())
    out = {}
    for mode in runners:
        ms = float(np.median(per_rep[mode]) * 1e3)
        spread = summarize_ms(intervals[mode])
        out[mode] = {
            "ms_per_token": ms,
            "tokens_per_s": 1e3 / ms,
            "per_token_p10_ms": spread["p10_ms"],
            "per_token_median_ms": spread["median_ms"],
            "per_token_p90_ms": spread["p90_ms"],
            "ms_per_token_by_repeat": [x * 1e3 for x in per_rep[mode]],
            "first_token_ms": float(np.median(prefill[mode]) * 1e3),
        }
    return out


def run_backend(
    name: str,
    bm: BenchModel,
    bandwidths: dict[str, Bandwidth],
    *,
    n: int,
    repeats: int,
    warmup_tokens: int,
    k: int,
    budget_s: float | None = None,
    log=print,
    compiled: bool = True,
    prompt_tokens: int | None = None,
    steering: bool = True,
) -> dict:
    """Every mode for one backend name ("torch-cpu", "torch-cuda", "mlx"); missing modes say why. ``compiled``:
    also the torch backends' compiled engine (its two modes)."""
    ids = _prompt(bm, prompt_tokens)
    bare = TorchBare(bm, "cuda" if name == "torch-cuda" else "cpu") if name.startswith("torch") else MlxBare(bm)
    runners: dict[str, Runner] = {"bare": bare}
    skipped: dict[str, str] = {}
    ours_ok, why = targets.neuroscope_backend_status(name)
    ours = None
    if ours_ok:
        ours = Ours(name, bm, k)
        runners["capture-off"] = ours.runner(False)
        runners["instrumented"] = ours.runner(True)
        runners["filtered"] = ours.runner(True, filtered=True)
        for mode, m in STEERED.items():
            if steering:
                runners[mode] = ours.runner(True, bench_steering(m, bm.sae.d_sae))
            else:
                skipped[mode] = "not asked for (--no-steering)"
    else:
        skipped = {mode: why for mode in MODES if mode != "bare"}
        log(f"[decode] {name}: measuring the bare framework only: {why}")
    fast = None
    if ours_ok and name.startswith("torch") and compiled:
        log(f"[decode] {name}: compiling the decode step (--engine compiled)")
        fast = Ours(name, bm, k, engine="compiled", warm_up_tokens=len(ids) + n)
        runners["compiled-capture-off"] = fast.runner(False)
        runners["compiled"] = fast.runner(True)
    elif ours_ok:
        why_not = "not asked for (--engines)" if name.startswith("torch") else f"{name} has one engine"
        skipped.update({mode: why_not for mode in COMPILED_MODES})
    try:
        modes = _measure(runners, ids, n, repeats, warmup_tokens, budget_s)
    finally:
        bare.close()
        for o in (ours, fast):
            if o is not None:
                o.close()
        gc.collect()
    bw = bandwidths[targets.device_of(name)]
    w_enc_bytes = bm.sae.d_model * bm.sae.d_sae * 4  # the backends hold W_enc in float32
    rec = {
        "backend": name,
        "device": targets.device_label(name),
        "model": bm.label,
        "dtype": bm.dtype,
        "hidden_size": bm.hidden_size,
        "n_layers": bm.n_layers,
        "vocab_size": bm.vocab_size,
        "sae_layer": bm.layer,
        "d_sae": bm.sae.d_sae,
        "k": k,
        "prompt_tokens": len(ids),
        "new_tokens": n,
        "repeats": len(modes["bare"]["ms_per_token_by_repeat"]),
        "modes": modes,
        "skipped_modes": skipped,
        "weight_bytes": bare.weight_bytes,
        "sae_w_enc_bytes": w_enc_bytes,
        "bandwidth_gbps": bw.gbps,
        "roofline_ms": bare.weight_bytes / (bw.gbps * 1e9) * 1e3,
        "roofline_instrumented_ms": (bare.weight_bytes + w_enc_bytes) / (bw.gbps * 1e9) * 1e3,
    }
    # the floor of an instrumented step from the device's measured copy bandwidth: every weight and W_enc read once
    copies = [v for k, v in bw.samples.items() if k.endswith("-copy")]
    if copies:
        rec["copy_bandwidth_gbps"] = max(copies)
        rec["floor_instrumented_ms"] = (bare.weight_bytes + w_enc_bytes) / (max(copies) * 1e9) * 1e3
    # ratios are medians over repeats of per-repeat ratios: the modes of one repeat ran back to back
    bare_r = np.array(modes["bare"]["ms_per_token_by_repeat"])
    rec["bare_x_roofline"] = modes["bare"]["ms_per_token"] / rec["roofline_ms"]
    if "instrumented" in modes:
        off_r = np.array(modes["capture-off"]["ms_per_token_by_repeat"])
        inst_r = np.array(modes["instrumented"]["ms_per_token_by_repeat"])
        rec["instrumented_vs_bare"] = float(np.median(inst_r / bare_r))
        rec["capture_off_vs_bare"] = float(np.median(off_r / bare_r))
        rec["sae_overhead_ms"] = float(np.median(inst_r - off_r))
        rec["sae_share_of_step"] = float(np.median((inst_r - off_r) / inst_r))
        # the same share from the median single-token interval: less sensitive to bursts of other work
        off_t, inst_t = modes["capture-off"]["per_token_median_ms"], modes["instrumented"]["per_token_median_ms"]
        rec["sae_share_of_step_token_median"] = (inst_t - off_t) / inst_t
        filt_r = np.array(modes["filtered"]["ms_per_token_by_repeat"])
        # the combined filter against none: the target is within 1 %
        rec["filtered_vs_instrumented"] = float(np.median(filt_r / inst_r))
        rec["filtered_vs_instrumented_token_median"] = modes["filtered"]["per_token_median_ms"] / inst_t
        for mode, m in STEERED.items():
            if mode not in modes:
                continue
            steer_r = np.array(modes[mode]["ms_per_token_by_repeat"])
            rec[f"steered_{m}_vs_instrumented"] = float(np.median(steer_r / inst_r))
            rec[f"steered_{m}_overhead_ms"] = float(np.median(steer_r - inst_r))
            rec[f"steered_{m}_vs_instrumented_token_median"] = modes[mode]["per_token_median_ms"] / inst_t
    if "compiled" in modes:
        comp_r = np.array(modes["compiled"]["ms_per_token_by_repeat"])
        comp_off_r = np.array(modes["compiled-capture-off"]["ms_per_token_by_repeat"])
        rec["compile_s"] = fast.compile_s
        rec["compiled_vs_instrumented"] = float(np.median(comp_r / inst_r))  # < 1: compiled is faster
        rec["compiled_vs_bare"] = float(np.median(comp_r / bare_r))
        # instrumented tok/s as a fraction of the same engine's tok/s without the SAE (target >= 0.97)
        rec["compiled_instrumented_vs_no_sae"] = float(np.median(comp_off_r / comp_r))
        rec["compiled_sae_share_of_step"] = float(np.median((comp_r - comp_off_r) / comp_r))
        rec["compiled_x_roofline"] = modes["compiled"]["ms_per_token"] / rec["roofline_instrumented_ms"]
    return rec


def _prompt(bm: BenchModel, length: int | None = None) -> list[int]:
    from benchmarks.models import prompt_ids

    return prompt_ids(bm.path, length)
