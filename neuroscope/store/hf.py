"""Hugging Face hub access: whether the hub is reachable, so an offline machine fails (or falls back) in seconds."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """False when HF_HUB_OFFLINE is set or the hub endpoint cannot be reached within a few seconds."""
    if _env_offline():
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def download_mode(console):
    """``(console, local_files_only)`` for one hub download: an unreachable hub reads the hub cache only, without a
    progress display, so it answers at once (a hit) or fails with one line (a miss) instead of retrying for
    seconds on end."""
    offline = not hub_reachable()
    return (None if offline else console), offline


UNREACHABLE = "the Hugging Face hub is unreachable"


# ------------------------------------------------------------------------------------------------ errors, tokens
LOGIN_HINT = "run `hf auth login` with a write token, or set HF_TOKEN (in the environment or a .env file)"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), "") or type(exc).__name__


def hub_failure(exc: BaseException, what: str, *, kind: str = "repo") -> str:
    """One line saying why ``what`` could not be fetched from the hub and what to do about it."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return (f"cannot download {what}: the {kind} is gated — accept its licence on its page "
                f"({_page(exc)}), then set HF_TOKEN to a token of that account (or run `hf auth login`)")
    if isinstance(exc, LocalEntryNotFoundError):
        return f"cannot download {what}: {UNREACHABLE} and it is not in the hub cache"
    if isinstance(exc, RepositoryNotFoundError):
        return f"cannot download {what}: no such {kind} on the hub (or it is private: set HF_TOKEN)"
    if isinstance(exc, RevisionNotFoundError):
        return f"cannot download {what}: no such revision"
    if isinstance(exc, EntryNotFoundError):
        return f"cannot download {what}: no such file in the repo"
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return f"cannot download {what}: the hub answered HTTP {exc.response.status_code}"
    return f"cannot download {what}: {one_line(exc)}"


def _page(exc: BaseException) -> str:
    from huggingface_hub import constants

    url = str(getattr(getattr(exc, "response", None), "url", "") or "")
    for marker in ("/resolve/", "/revision/", "/tree/"):
        if marker in url:
            repo = url.split(marker)[0].removeprefix(constants.ENDPOINT).strip("/")
            repo = repo.removeprefix("api/models/").removeprefix("api/datasets/")
            return f"{constants.ENDPOINT}/{repo}"
    return constants.ENDPOINT


def token() -> str | None:
    """The token huggingface_hub would send: HF_TOKEN, else the one `hf auth login` stored."""
    from huggingface_hub import get_token

    return get_token()


def write_access_problem(whoami: dict) -> str | None:
    """Why the token ``whoami`` describes cannot write to a repo, or None when it can (or it cannot be told)."""
    access = (whoami.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    if role in (None, "write", "admin"):
        return None
    if role == "fineGrained":
        grained = access.get("fineGrained") or {}
        perms = {p for scope in grained.get("scoped") or [] for p in scope.get("permissions") or []}
        perms |= {p for p in grained.get("global") or [] if isinstance(p, str)}
        if "repo.write" in perms:
            return None
        return "its fine-grained permissions do not include writing to repos"
    return f"it is a {role} token"
