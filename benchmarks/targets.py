"""Which frameworks and Neuroscope backends this machine can benchmark, and on which device each runs."""

from __future__ import annotations

import importlib.util

ALL = ("numpy", "torch-cpu", "torch-cuda", "mlx")


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def framework_status(name: str) -> tuple[bool, str]:
    """(usable, reason if not) for running the bare framework ``name`` here."""
    if name == "numpy":
        return True, ""
    if name in ("torch-cpu", "torch-cuda"):
        if not _has("torch"):
            return False, "torch is not installed"
        if name == "torch-cuda":
            import torch

            if not torch.cuda.is_available():
                return False, "no CUDA device (torch.cuda.is_available() is False)"
        return True, ""
    if name == "mlx":
        if not _has("mlx"):
            return False, "mlx is not installed (Linux: pip install 'mlx[cpu]' or 'mlx[cuda12]')"
        try:
            import mlx.core  # noqa: F401
        except ImportError as exc:
            return False, f"mlx does not import: {exc}"
        return True, ""
    return False, f"unknown backend {name!r} (choose from {', '.join(ALL)})"


def device_of(name: str) -> str:
    """The memory the backend's weights live in: "cpu", "cuda" or "mlx-gpu"."""
    if name == "torch-cuda":
        return "cuda"
    if name == "mlx":
        import mlx.core as mx

        return "mlx-gpu" if mx.default_device() == mx.gpu else "cpu"
    return "cpu"


def device_label(name: str) -> str:
    dev = device_of(name)
    if dev == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(0)})"
    if dev == "mlx-gpu":
        import mlx.core as mx

        return "metal" if mx.metal.is_available() else "mlx gpu"
    return "cpu"


def neuroscope_backend_status(name: str) -> tuple[bool, str]:
    """(usable, reason if not) for Neuroscope's own backend ``name`` (through the registry)."""
    from neuroscope.core import registry

    if name not in registry.names():
        return False, f"Neuroscope has no {name!r} backend"
    if registry.backend_class(name) is None:
        return False, f"Neuroscope's {name} backend does not import on this machine"
    if name not in registry.available():
        return False, f"Neuroscope's {name} backend is not available here: {registry.install_hint(name)}"
    return True, ""
