"""What ``neuroscope clean <what>`` moves to the trash: data Neuroscope generated or downloaded into its cache.

Only the cache's own data directories (``paths.data_roots()``) are cleaned — never a corpus the user passed
with ``--corpus-path``, never the Hugging Face cache (models and SAEs). The roots stay; their contents move,
each top-level child one trash item, so a root that is a symlink to another disk keeps its link.
"""

from __future__ import annotations

from pathlib import Path

from neuroscope.store import paths, trash

# clean target -> the data roots it empties
TARGETS: dict[str, tuple[str, ...]] = {
    "corpus": ("corpus",),
    "checkpoints": ("checkpoints",),
    "labels": ("labels", "examples", "neuronpedia"),
    "calibration": ("calibration",),
    "compile": ("inductor",),
}
TARGETS["all"] = tuple(dict.fromkeys(root for roots in TARGETS.values() for root in roots))


def _hf_cache() -> Path | None:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency
        return None
    return Path(constants.HF_HUB_CACHE).expanduser().absolute()


def _touches(path: Path, protected: Path | None) -> bool:
    if protected is None:
        return False
    p = path.absolute()
    real = path.resolve()
    return any(q == protected or q.is_relative_to(protected) or protected.is_relative_to(q) for q in (p, real))


def targets(what: str) -> list[Path]:
    """The paths ``clean what`` would move, in a stable order (hidden temporary files included: they are data)."""
    if what not in TARGETS:
        raise ValueError(f"unknown clean target {what!r} (one of {', '.join(TARGETS)})")
    roots = paths.data_roots()
    hf = _hf_cache()
    found: list[Path] = []
    for name in TARGETS[what]:
        root = roots[name]
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if not _touches(child, hf):
                found.append(child)
    return found


def clean(what: str) -> trash.Entry | None:
    """Move ``what``'s data into one trash entry (None: nothing to clean)."""
    return trash.trash(what, targets(what))
