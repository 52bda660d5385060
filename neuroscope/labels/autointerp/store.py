"""JSON-lines files that grow one finished item at a time and survive ``kill -9``, and the ``--features`` syntax.

A line is written whole, flushed and fsynced as its item completes; a process killed mid-write can leave a
torn last line (no newline at the end), which readers skip and :func:`open_append` cuts off before appending,
so a resumed job neither loses a finished item nor duplicates one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any, Iterable


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The complete lines of ``path`` that hold a JSON object (none when it does not exist)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for raw in data.split(b"\n")[:-1] if not data.endswith(b"\n") else data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def open_append(path: str | Path) -> IO[bytes]:
    """``path`` opened for appending, a torn last line removed first (the directory is created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fh = open(p, "a+b")
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    if size:
        fh.seek(max(0, size - 1))
        if fh.read(1) != b"\n":
            fh.seek(0)
            data = fh.read()
            cut = data.rfind(b"\n") + 1
            fh.truncate(cut)
            os.fsync(fh.fileno())
    fh.seek(0, os.SEEK_END)
    return fh


def append(fh: IO[bytes], obj: dict[str, Any]) -> None:
    fh.write((json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode("utf-8"))
    fh.flush()
    os.fsync(fh.fileno())


def parse_features(spec: str | None, d_sae: int | None = None) -> list[int] | None:
    """``"0-99,4521"`` -> the sorted indices; None for no spec. ValueError names what is wrong."""
    if spec is None or not spec.strip():
        return None
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo_s, hi_s = part.split("-", 1)
                lo, hi = int(lo_s), int(hi_s)
                if lo > hi:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ValueError(f"--features: {part!r} is not an index or a range like 0-99") from None
    bad = [i for i in out if i < 0 or (d_sae is not None and i >= d_sae)]
    if bad:
        raise ValueError(f"--features: feature {min(bad)} is out of range (the SAE has {d_sae} features)")
    return sorted(out)


def in_subset(indices: Iterable[int], subset: list[int] | None) -> list[int]:
    chosen = sorted(indices)
    if subset is None:
        return chosen
    keep = set(subset)
    return [i for i in chosen if i in keep]
