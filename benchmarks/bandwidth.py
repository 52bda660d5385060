"""Memory bandwidth of each device, measured in the same run as the figures it is compared with.

Two kernels per framework on a buffer several times larger than the last-level cache: a reduction (reads
``n`` bytes) and a copy (reads ``n`` and writes ``n`` bytes, counted as ``2n`` like STREAM's copy). The
device's bandwidth is the best of them: what that framework can actually pull from memory here.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

GB = 1e9


@dataclass
class Bandwidth:
    device: str  # "cpu", "cuda", "mlx-gpu"
    gbps: float  # best measured, GB/s (1e9 bytes)
    method: str  # which framework/kernel gave it
    buffer_bytes: int
    samples: dict[str, float] = field(default_factory=dict)  # "<framework>-<kernel>" -> GB/s

    def to_json(self) -> dict:
        return asdict(self)


def _best(fn, reps: int) -> float:
    fn()  # warm-up (page faults, allocation)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _numpy(nbytes: int, reps: int) -> dict[str, float]:
    a = np.ones(nbytes // 4, dtype=np.float32)
    b = np.empty_like(a)
    return {
        "numpy-copy": 2 * a.nbytes / _best(lambda: np.copyto(b, a), reps) / GB,
        "numpy-sum": a.nbytes / _best(lambda: np.add.reduce(a), reps) / GB,
    }


def _torch(nbytes: int, reps: int, device: str) -> dict[str, float]:
    import torch

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    a = torch.ones(nbytes // 4, dtype=torch.float32, device=dev)
    b = torch.empty_like(a)

    def copy():
        b.copy_(a)
        sync()

    def total():
        a.sum()
        sync()

    return {"torch-copy": 2 * nbytes / _best(copy, reps) / GB, "torch-sum": nbytes / _best(total, reps) / GB}


def _mlx(nbytes: int, reps: int) -> dict[str, float]:
    import mlx.core as mx

    a = mx.ones((nbytes // 4,), dtype=mx.float32)
    mx.eval(a)
    return {
        "mlx-copy": 2 * nbytes / _best(lambda: mx.eval(a + 0), reps) / GB,
        "mlx-sum": nbytes / _best(lambda: mx.eval(a.sum()), reps) / GB,
    }


def measure(device: str, *, nbytes: int, reps: int) -> Bandwidth:
    """Measure ``device`` ("cpu", "cuda" or "mlx-gpu") with every framework that runs on it here."""
    samples: dict[str, float] = {}
    if device == "cpu":
        samples.update(_numpy(nbytes, reps))
        try:
            samples.update(_torch(nbytes, reps, "cpu"))
        except ImportError:
            pass
    elif device == "cuda":
        samples.update(_torch(nbytes, reps, "cuda"))
    elif device == "mlx-gpu":
        samples.update(_mlx(nbytes, reps))
    else:
        raise ValueError(f"unknown device {device!r}")
    method, gbps = max(samples.items(), key=lambda kv: kv[1])
    return Bandwidth(device, gbps, method, nbytes, samples)
