"""Turning model-loading failures into one clear, user-facing line (shared by every backend)."""

from __future__ import annotations

from neuroscope.core.protocol import BackendError


def model_load_error(name_or_path: str, exc: BaseException) -> BackendError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    kind = type(exc).__name__
    if "GatedRepo" in kind or "gated" in text.lower() or "401" in text:
        hint = "the repo is gated: accept its licence on the hub and set HF_TOKEN (or run `hf auth login`)"
    elif "LocalEntryNotFound" in kind or "offline" in text.lower() or "connect" in text.lower():
        hint = "offline and not in the Hugging Face cache: connect once, or pass a local directory"
    elif "RepositoryNotFound" in kind or "404" in text or "is not a local folder" in text:
        hint = "no such model id or directory"
    else:
        hint = text
    return BackendError(f"cannot load model {name_or_path!r}: {hint}")
