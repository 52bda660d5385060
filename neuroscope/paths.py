"""Where Neuroscope keeps its files."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "NEUROSCOPE_CACHE"


def cache_dir() -> Path:
    """``$NEUROSCOPE_CACHE``, else ``$XDG_CACHE_HOME/neuroscope``, else ``~/.cache/neuroscope``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "neuroscope"
