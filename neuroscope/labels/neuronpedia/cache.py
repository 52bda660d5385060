"""The Neuronpedia cache of one SAE: one JSON line per feature asked,
``{"index", "label" | null, "score"?, "fetched_at"}``; the last line of an index wins.

``label: null`` records that Neuronpedia has no explanation for the feature: it is not asked again for a day
(:data:`NULL_TTL_S`), then asked again, since explanations get added.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from neuroscope.store import jsonl, paths

NULL_TTL_S = 24 * 3600.0


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age_s(iso: str, now: float) -> float:
    try:
        t = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return math.inf
    return now - t


@dataclass(frozen=True, slots=True)
class Answer:
    index: int
    label: str | None  # None: Neuronpedia has no explanation for this feature
    score: float | None = None
    fetched_at: str = ""

    def to_json(self) -> dict:
        row: dict = {"index": self.index, "label": self.label}
        if self.score is not None:
            row["score"] = self.score
        row["fetched_at"] = self.fetched_at or now_iso()
        return row

    def fresh(self, now: float | None = None) -> bool:
        """A label is kept; a "none" answer only for a day."""
        if self.label is not None:
            return True
        return _age_s(self.fetched_at, time.time() if now is None else now) < NULL_TTL_S


class NeuronpediaCache:
    def __init__(self, model_id: str, source_id: str, d_sae: int | None = None):
        self.path: Path = paths.neuronpedia_file(model_id, source_id)
        self.d_sae = d_sae

    def load(self) -> dict[int, Answer]:
        """The last answer per index (lines for an index outside the SAE, or malformed, are skipped)."""
        out: dict[int, Answer] = {}
        for row in jsonl.read_objects(self.path):
            idx, label, score = row.get("index"), row.get("label"), row.get("score")
            if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
                continue
            if self.d_sae is not None and idx >= self.d_sae:
                continue
            if label is not None and (not isinstance(label, str) or not label.strip()):
                continue
            if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
                score = None
            out[idx] = Answer(idx, label, None if score is None else float(score), str(row.get("fetched_at", "")))
        return out

    def append(self, answers: list[Answer]) -> None:
        jsonl.append_objects(self.path, (a.to_json() for a in answers))
