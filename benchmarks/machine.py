"""What a benchmark ran on: host, CPU and GPU names, memory, library versions, thread and BLAS settings."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import socket
import subprocess
import sys

PACKAGES = ("neuroscope", "numpy", "torch", "transformers", "mlx", "mlx-lm", "safetensors", "tokenizers")
ENV_KEYS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_name() -> str:
    if sys.platform == "darwin":
        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, env={**os.environ, "LC_ALL": "C"})
        for line in out.stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def gpu_names() -> list[str]:
    names: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            names += [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    try:
        import mlx.core as mx

        if mx.metal.is_available():
            info = mx.metal.device_info()
            names.append(str(info.get("device_name", "Apple GPU (Metal)")))
    except (ImportError, AttributeError):
        pass
    return names


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def threads() -> dict[str, int | None]:
    out: dict[str, int | None] = {"cpu_count": os.cpu_count()}
    try:
        import torch

        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        out["torch_threads"] = None
    return out


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def describe() -> dict:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "gpus": gpu_names(),
        "memory_bytes": memory_bytes(),
        "threads": threads(),
        "env": {k: os.environ.get(k) for k in ENV_KEYS},
        "versions": versions(),
        "load_average_start": load_average(),
    }


class OtherLoad:
    """CPU time that *other* processes used while a block ran, in cores (Linux ``/proc/stat``; None elsewhere).

    A 2-core machine shared with a test run gives torch's two threads a core each to wait for: the figure
    says how much of the machine the benchmark did not have."""

    def __enter__(self) -> "OtherLoad":
        self.cores: float | None = None
        self._t0, self._busy0, self._self0 = _now(), _busy_s(), _self_s()
        return self

    def __exit__(self, *exc) -> None:
        busy1 = _busy_s()
        if self._busy0 is None or busy1 is None:
            return
        wall = _now() - self._t0
        if wall > 0:
            self.cores = max(0.0, ((busy1 - self._busy0) - (_self_s() - self._self0)) / wall)


def _now() -> float:
    import time

    return time.perf_counter()


def _self_s() -> float:
    t = os.times()
    return t.user + t.system


def _busy_s() -> float | None:
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    busy = sum(v[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")
