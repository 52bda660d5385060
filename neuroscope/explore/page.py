"""One feature's page: what it is (label, source, score), how it fires (calibration statistics, examples) and
what it does (decoder-cosine neighbours and direct logit effects, computed by the backend on the device).

The device part (:class:`~neuroscope.core.protocol.FeatureEffects`) is kept per feature in a bounded cache, so
a page asked again costs only the host part: labels are read fresh each time (they change while serving).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from neuroscope.calibration import stats as calibration
from neuroscope.core.protocol import FeatureEffects
from neuroscope.store import paths

CACHE_FEATURES = 4096  # feature effects kept (a few hundred bytes each)
NEIGHBOURS = 10
LOGITS = 10


class PageError(ValueError):
    """A feature index the page refuses (user-facing); ``status`` is 400 (not an integer) or 404 (out of range)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def parse_index(text: str, d_sae: int) -> int:
    """A feature index from a path or a command line: ``123`` or ``#123``."""
    raw = text.strip().removeprefix("#")
    if not raw.isdigit() or not raw.isascii():
        raise PageError(f"feature index must be a non-negative integer, got {text!r}", 400)
    index = int(raw)
    if index >= d_sae:
        raise PageError(f"feature {index} does not exist: the SAE has {d_sae} features (0..{d_sae - 1})", 404)
    return index


def find_calibration(ns: paths.Namespace | None, d_sae: int) -> calibration.Calibration | None:
    """The calibration of this model / SAE / layer / norm, when there is one that matches; else None."""
    if ns is None:
        return None
    try:
        cal = calibration.load(paths.calibration_file(ns))
        cal.check_identity(calibration.identity(ns, d_sae))
    except calibration.CalibrationError:
        return None
    return cal


@dataclass
class Explorer:
    """Builds feature pages. ``labels`` is a label chain (``entry(i)`` gives label, source and score);
    ``namespace`` locates the calibration and the examples runs (None: the page has neither)."""

    labels: Any
    tokenizer: Any
    namespace: paths.Namespace | None = None
    calibration: calibration.Calibration | None = None

    def __post_init__(self) -> None:
        self._effects: OrderedDict[int, FeatureEffects] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def for_namespace(cls, labels, tokenizer, ns: paths.Namespace | None) -> "Explorer":
        return cls(labels, tokenizer, ns, find_calibration(ns, labels.d_sae))

    @property
    def d_sae(self) -> int:
        return int(self.labels.d_sae)

    def index(self, text: str) -> int:
        return parse_index(text, self.d_sae)

    # ------------------------------------------------------------------------------------------ the device part
    def cached(self, index: int) -> FeatureEffects | None:
        with self._lock:
            eff = self._effects.get(index)
            if eff is not None:
                self._effects.move_to_end(index)
            return eff

    def keep(self, index: int, eff: FeatureEffects) -> None:
        with self._lock:
            self._effects[index] = eff
            self._effects.move_to_end(index)
            while len(self._effects) > CACHE_FEATURES:
                self._effects.popitem(last=False)

    # ------------------------------------------------------------------------------------------ the page
    def page(self, index: int, eff: FeatureEffects | None) -> dict[str, Any]:
        """The page as JSON; ``eff`` None leaves neighbours and logits out (null)."""
        e = self.labels.entry(index)
        return {
            "index": index,
            "label": e.label,
            "source": e.source,
            "score": e.score,
            "description": e.description,  # the labeler's account, when its source gave one
            "stats": self.stats(index),
            **self.examples(index),
            "neighbours": None if eff is None else self.neighbours(eff),
            "logits": None if eff is None else self.logits(eff),
        }

    def stats(self, index: int) -> dict[str, float] | None:
        cal = self.calibration
        if cal is None:
            return None
        feats = cal.data["features"]
        return {k: float(feats[k][index]) for k in ("firing_rate", "mean", "std", "max")}

    def examples(self, index: int) -> dict[str, list[dict[str, Any]]]:
        """From the newest examples run: ``density``, the histogram of its nonzero activations ({edges, counts}:
        log-spaced bins, null when it never fired), ``examples``, its top activating windows, strongest first, and
        ``quantile_examples``, windows sampled across its activation range, strongest first, each with its
        ``quantile`` (10: the strongest tenth … 1: the weakest); null and [] without a run."""
        none = {"density": None, "examples": [], "quantile_examples": []}
        if self.namespace is None:
            return none
        from neuroscope.labels.autointerp import examples

        run = examples.newest(self.namespace)
        if run is None or run.d_sae != self.d_sae:
            return none
        density = run.density(index)
        return {"density": None if density is None else {"edges": [float(e) for e in density[0]],
                                                         "counts": [int(c) for c in density[1]]},
                "examples": [self._window(w) for w in run.windows(index)],
                "quantile_examples": [{**self._window(w), "quantile": q}
                                      for q, w in examples.quantile_windows(run.range_windows(index))]}

    def _window(self, w) -> dict[str, Any]:
        ids = [int(t) for t in w.tokens]
        return {"tokens": self._pieces(ids), "token_ids": ids, "activations": [round(float(a), 6) for a in w.acts],
                "max": round(float(w.value), 6)}

    def neighbours(self, eff: FeatureEffects) -> list[dict[str, Any]]:
        return [{"index": int(i), "label": self.labels[int(i)], "cosine": round(float(c), 6)}
                for i, c in zip(eff.neighbour_ids, eff.neighbour_cosines)]

    def logits(self, eff: FeatureEffects) -> dict[str, list[dict[str, Any]]]:
        def side(ids, values):
            ids = [int(i) for i in ids]
            return [{"token": t, "token_id": i, "value": round(float(v), 6)}
                    for t, i, v in zip(self._pieces(ids), ids, values)]

        return {"positive": side(eff.positive_ids, eff.positive_values),
                "negative": side(eff.negative_ids, eff.negative_values)}

    def _pieces(self, ids: list[int]) -> list[str]:
        """Each token's own text (special tokens spelled out)."""
        return [self.tokenizer.decode([i], skip_special_tokens=False) for i in ids]
