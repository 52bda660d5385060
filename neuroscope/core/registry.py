"""Backends by name, imported lazily so a Mac without torch and a Linux box without mlx both work."""

from __future__ import annotations

import importlib
from typing import Callable

from neuroscope.core.protocol import Backend, BackendError

# name -> "module:Class"; modules live in the top-level ``backends`` package.
_BUILTIN: dict[str, str] = {
    "mlx": "backends.mlx_backend:MLXBackend",
    "torch-cuda": "backends.torch_backend:TorchCUDABackend",
    "torch-cpu": "backends.torch_backend:TorchCPUBackend",
}
_REGISTERED: dict[str, Callable[[], type[Backend]]] = {}

# `auto` tries these in order.
AUTO_ORDER = ("mlx-metal", "torch-cuda", "torch-cpu", "mlx")


def register(name: str, factory: Callable[[], type[Backend]]) -> None:
    """Register a backend class factory under ``name`` (third-party backends and tests use this)."""
    _REGISTERED[name] = factory


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def names() -> list[str]:
    return [*_BUILTIN, *(n for n in _REGISTERED if n not in _BUILTIN)]


def _import(name: str) -> type[Backend] | None:
    if name in _REGISTERED:
        return _REGISTERED[name]()
    target = _BUILTIN.get(name)
    if target is None:
        return None
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return getattr(module, cls_name)


def backend_class(name: str) -> type[Backend] | None:
    """The class for ``name`` if its module imports, else None."""
    return _import(name)


def available() -> list[str]:
    out = []
    for n in names():
        cls = _import(n)
        if cls is not None and _safe_available(cls):
            out.append(n)
    return out


def _safe_available(cls: type[Backend]) -> bool:
    try:
        return bool(cls.is_available())
    except Exception:
        return False


_INSTALL_HINTS = {
    "mlx": "pip install -e '.[mlx]' (Linux: also 'mlx[cpu]', 'mlx[cuda12]' or 'mlx[cuda13]')",
    "torch-cuda": "pip install -e '.[torch]' with a CUDA build of torch, on a machine with an NVIDIA GPU",
    "torch-cpu": "pip install torch (CPU wheel) then pip install -e '.[torch]'",
}


def install_hint(name: str) -> str:
    cls = _import(name)
    if cls is not None:
        try:
            return cls.install_hint()
        except Exception:
            pass
    return _INSTALL_HINTS.get(name, "")


def resolve(name: str) -> type[Backend]:
    """Return the backend class for ``name`` (or the best available for ``auto``); raise a one-line error."""
    avail = available()
    if name == "auto":
        for cand in AUTO_ORDER:
            if cand == "mlx-metal":
                cls = _import("mlx")
                if cls is not None and _safe_available(cls) and getattr(cls, "uses_metal", lambda: False)():
                    return cls
                continue
            if cand in avail:
                return _import(cand)  # type: ignore[return-value]
        raise BackendError(
            "no backend is available on this machine; install one: "
            + "; ".join(f"{n}: {_INSTALL_HINTS[n]}" for n in _BUILTIN)
        )
    if name not in names():
        raise BackendError(
            f"unknown backend {name!r}; choose one of: auto, {', '.join(names())} "
            f"(available here: {', '.join(avail) or 'none'})"
        )
    if name not in avail:
        raise BackendError(
            f"backend {name!r} is not available on this machine (available: {', '.join(avail) or 'none'}); "
            f"to use it: {install_hint(name)}"
        )
    return _import(name)  # type: ignore[return-value]
