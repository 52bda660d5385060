"""JSON Lines files written one batch at a time by a process that may be killed: read them tolerantly, append
durably."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

log = logging.getLogger("neuroscope.jsonl")


def read_objects(path: str | Path) -> list[dict]:
    """Every JSON object line of ``path`` (none when it does not exist). A torn last line (a writer killed
    mid-append) is skipped silently; any other line that is not a JSON object is skipped with a warning."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    out: list[dict] = []
    bad = 0
    for n, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            obj = None
        if isinstance(obj, dict):
            out.append(obj)
        elif n != len(lines) - 1:  # the last line may be torn; anything else is damage worth a word
            bad += 1
    if bad:
        log.warning("%s: skipped %d malformed line%s", p, bad, "s" if bad != 1 else "")
    return out


def append_objects(path: str | Path, objects: Iterable[dict]) -> None:
    """Append one line per object, then flush and fsync: an answer batch is on disk when this returns. A torn
    last line left by a killed writer is ended first, so it never swallows the new lines."""
    rows = [json.dumps(o, ensure_ascii=False, separators=(", ", ": ")) for o in objects]
    if not rows:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "ab+") as f:
        prefix = b""
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                prefix = b"\n"
        f.write(prefix + ("\n".join(rows) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
