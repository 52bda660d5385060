"""Calibration statistics: how often and how strongly each SAE feature fires over a corpus.

A backend's corpus pass reduces each batch on the device to :class:`BatchStats` (per-feature counts, sums,
squared deviations from the batch mean, and maxima over the counted positions); :class:`Accumulator` combines
batches on the host in float64 and writes the one JSON file other tools read::

    {"format": "neuroscope-calibration/1", "model", "sae", "sae_path", "layer", "d_sae", "sae_input_norm",
     "samples", "tokens", "created", "features": {"firing_rate", "mean", "std", "max"},
     "summary": {"dead", "dense", "mean_l0"}}

``firing_rate[i]`` is the fraction of counted positions where feature i's activation is > 0; ``mean`` and
``std`` are over the positions where it fired (0 when it never fired); ``max`` is its largest activation.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuroscope.core.protocol import BatchStats, CorpusBatch, CorpusResult  # BatchStats: a batch reduced on the device
from neuroscope.store import paths

FORMAT = "neuroscope-calibration/1"
DENSE_RATE = 0.10  # a feature firing on more than this fraction of positions is "dense"
IDENTITY_KEYS = ("model", "sae", "sae_path", "layer", "d_sae", "sae_input_norm")
_ARRAYS = ("count", "sum", "m2", "max")  # an Accumulator's per-feature float64 state


class CalibrationError(ValueError):
    """A calibration file is missing, malformed or made for another model / SAE. The message is user-facing."""


DEMO_MODEL = "neuroscope-demo"  # the built-in demo's model id (its directory depends on the cache location)


def model_identity(model: str, *, demo: bool = False) -> str:
    """How a calibration names its model: the hub id as given, a local directory's absolute path, or
    ``neuroscope-demo`` for the built-in demo."""
    if demo:
        return DEMO_MODEL
    p = Path(model).expanduser()
    return str(p.resolve()) if p.is_dir() else model


def namespace_for(model: str, sae: str, sae_path: str, sae_local_path: str | None, layer: int,
                  input_norm: str, *, demo: bool = False) -> paths.Namespace:
    """The cache namespace of a serving configuration (a local SAE file is named by its content's hash)."""
    name = model_identity(model, demo=demo)
    if sae_local_path:
        return paths.Namespace.for_local_sae(name, sae_local_path, layer, input_norm)
    return paths.Namespace.for_hub_sae(name, sae, sae_path, layer, input_norm)


def identity(ns: paths.Namespace, d_sae: int) -> dict[str, Any]:
    """The fields a calibration file must share with the configuration that uses it."""
    return {"model": ns.model, "sae": ns.sae, "sae_path": ns.sae_path, "layer": ns.layer, "d_sae": int(d_sae),
            "sae_input_norm": ns.input_norm}


@dataclass
class Accumulator:
    d_sae: int
    samples: int = 0
    tokens: int = 0
    count: np.ndarray = field(default=None)  # type: ignore[assignment]
    sum: np.ndarray = field(default=None)  # type: ignore[assignment]
    m2: np.ndarray = field(default=None)  # type: ignore[assignment]
    max: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        for name in _ARRAYS:
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.d_sae, dtype=np.float64))

    records = False  # a corpus pass for calibration needs the batch statistics only

    @property
    def samples_done(self) -> int:
        return self.samples

    def add_batch(self, start: int, ids: list[list[int]], batch: CorpusBatch, result: CorpusResult) -> None:
        """The corpus-pass driver's fold (:mod:`neuroscope.calibration.driver`): one batch's statistics."""
        self.add(result.stats, samples=len(ids))

    def add(self, batch: BatchStats, samples: int) -> None:
        """Fold one batch in: counts and sums add up; the squared deviations combine with the shift between the
        two means (Chan, Golub and LeVeque's pairwise update), all in float64."""
        if batch.count.shape != (self.d_sae,):
            raise ValueError(f"batch statistics have shape {batch.count.shape}, the SAE has {self.d_sae} features")
        n_b = np.asarray(batch.count, dtype=np.float64)
        s_b = np.asarray(batch.sum, dtype=np.float64)
        n_a, total = self.count, self.count + n_b
        both = (n_a > 0) & (n_b > 0)
        safe = lambda n: np.where(n > 0, n, 1.0)  # noqa: E731
        delta = s_b / safe(n_b) - self.sum / safe(n_a)
        self.m2 = self.m2 + np.asarray(batch.m2, dtype=np.float64) + np.where(
            both, delta * delta * n_a * n_b / safe(total), 0.0)
        self.samples += samples
        self.tokens += int(batch.tokens)
        self.count = total
        self.sum = self.sum + s_b
        np.maximum(self.max, np.asarray(batch.max, dtype=np.float64), out=self.max)

    # ------------------------------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """Everything needed to resume exactly (float64 arrays as lists: JSON keeps them bit for bit)."""
        return {"d_sae": self.d_sae, "samples": self.samples, "tokens": self.tokens,
                **{k: getattr(self, k).tolist() for k in _ARRAYS}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Accumulator":
        arrays = {k: np.asarray(state[k], dtype=np.float64) for k in _ARRAYS}
        return cls(int(state["d_sae"]), int(state["samples"]), int(state["tokens"]), **arrays)

    # ------------------------------------------------------------------------------------------ results
    def features(self) -> dict[str, np.ndarray]:
        n = max(self.tokens, 1)
        fired = self.count > 0
        safe = np.where(fired, self.count, 1.0)
        mean = np.where(fired, self.sum / safe, 0.0)
        var = np.where(fired, self.m2 / safe, 0.0)
        return {
            "firing_rate": self.count / n,
            "mean": mean,
            "std": np.sqrt(np.maximum(var, 0.0)),
            "max": np.where(fired, self.max, 0.0),
        }

    def to_json(self, identity: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in IDENTITY_KEYS if k not in identity]
        if missing:
            raise ValueError(f"calibration identity lacks {', '.join(missing)}")
        feats = self.features()
        return {
            "format": FORMAT,
            **{k: identity[k] for k in IDENTITY_KEYS},
            "samples": self.samples,
            "tokens": self.tokens,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "features": {k: [float(x) for x in v] for k, v in feats.items()},
            "summary": summarize(feats["firing_rate"], self.count.sum() / max(self.tokens, 1)),
        }


def summarize(firing_rate: np.ndarray, mean_l0: float) -> dict[str, Any]:
    return {
        "dead": int((firing_rate <= 0).sum()),
        "dense": int((firing_rate > DENSE_RATE).sum()),
        "mean_l0": float(mean_l0),
    }


@dataclass(frozen=True)
class Calibration:
    """A calibration file, read and checked."""

    path: Path
    data: dict[str, Any]

    @property
    def firing_rate(self) -> np.ndarray:
        return np.asarray(self.data["features"]["firing_rate"], dtype=np.float64)

    @property
    def max(self) -> np.ndarray:
        return np.asarray(self.data["features"]["max"], dtype=np.float64)

    @property
    def tokens(self) -> int:
        return int(self.data["tokens"])

    def check_identity(self, expected: dict[str, Any]) -> None:
        """Refuse a file made for another model / SAE / layer / norm / width, naming what differs."""
        diffs = [
            f"{k} {self.data.get(k)!r} (serving {expected[k]!r})"
            for k in IDENTITY_KEYS
            if k in expected and self.data.get(k) != expected[k]
        ]
        if diffs:
            raise CalibrationError(f"calibration {self.path} was made for another configuration: {'; '.join(diffs)}")


def load(path: str | Path) -> Calibration:
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"calibration file not found: {p}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CalibrationError(f"calibration file {p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibrationError(f"calibration file {p} is not a {FORMAT} file")
    feats = data.get("features")
    d_sae = data.get("d_sae")
    if not isinstance(d_sae, int) or d_sae < 1 or not isinstance(feats, dict):
        raise CalibrationError(f"calibration file {p} lacks d_sae or features")
    for key in ("firing_rate", "mean", "std", "max"):
        values = feats.get(key)
        if not isinstance(values, list) or len(values) != d_sae:
            raise CalibrationError(f"calibration file {p}: features.{key} must be a list of {d_sae} numbers")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise CalibrationError(f"calibration file {p}: features.{key} holds a non-finite or non-numeric value")
    if not isinstance(data.get("tokens"), int) or data["tokens"] < 1:
        raise CalibrationError(f"calibration file {p}: tokens must be a positive integer")
    return Calibration(p, data)
