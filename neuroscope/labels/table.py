"""Feature index -> human-readable label."""

from __future__ import annotations

import json
import math
from pathlib import Path


class LabelError(ValueError):
    """The labels file is missing or malformed. The message is user-facing."""


class Labels:
    """Labels from a JSON file with a numeric fallback (``feature_<i>``) for every feature it does not name."""

    def __init__(self, d_sae: int, mapping: dict[int, str] | None = None, source: str = "fallback",
                 scores: dict[int, float] | None = None):
        self.d_sae = d_sae
        self._map = dict(mapping or {})
        self.source = source
        self.scores = dict(scores or {})  # from ``{"label", "score"}`` entries, where a file gives them

    def __getitem__(self, index: int) -> str:
        return self._map.get(index) or f"feature_{index}"

    def known(self, index: int) -> str | None:
        """The label the file gives ``index``, or None (no ``feature_<i>`` fallback)."""
        return self._map.get(index) or None

    def __len__(self) -> int:
        return self.d_sae

    @property
    def named(self) -> int:
        return len(self._map)

    def as_dict(self) -> dict[str, str]:
        return {str(i): self[i] for i in range(self.d_sae)}

    def observe(self, indices) -> None:
        """Features that appeared in the stream; a file's labels do not care (a label chain asks for more)."""

    @classmethod
    def load(cls, path: str | Path | None, d_sae: int) -> "Labels":
        """Read ``{"123": "label", ...}``, ``{"labels": {...}}`` or a JSON list (index = position)."""
        if path is None:
            return cls(d_sae)
        p = Path(path).expanduser()
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LabelError(f"labels file not found: {p}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LabelError(f"labels file {p} is not valid JSON: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("labels"), (dict, list)):
            data = data["labels"]
        if isinstance(data, list):
            items = [(str(i), v) for i, v in enumerate(data)]
        elif isinstance(data, dict):
            items = list(data.items())
        else:
            raise LabelError(f"labels file {p} must hold an object of index -> label (or a list)")
        mapping: dict[int, str] = {}
        scores: dict[int, float] = {}
        for key, value in items:
            try:
                idx = int(key)
            except (TypeError, ValueError):
                raise LabelError(f"labels file {p}: key {key!r} is not a feature index") from None
            if not 0 <= idx < d_sae:
                raise LabelError(f"labels file {p}: feature {idx} is out of range for an SAE with {d_sae} features")
            if isinstance(value, dict):  # {"label": ..., "score"?: ...} entries
                score = value.get("score")
                if isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score):
                    scores[idx] = float(score)
                value = value.get("label") or value.get("description")
            if value is None:
                continue
            if not isinstance(value, str):
                raise LabelError(f"labels file {p}: the label of feature {idx} is not a string")
            mapping[idx] = value
        return cls(d_sae, mapping, source=str(p), scores={i: v for i, v in scores.items() if mapping.get(i)})
