"""Read every label source of one served SAE and build its :class:`~neuroscope.labels.chain.LabelChain`.

Files the auto-interp commands write (``labels.jsonl``, ``scores.jsonl``, the legacy ``labels.json``) and the
Neuronpedia cache are read tolerantly: a torn last line is skipped, a malformed cache file is a warning (the chain
moves on without it). Only ``--labels-path``, which the user named, stops the start when it is broken.
"""

from __future__ import annotations

import math
from pathlib import Path

from neuroscope.labels.chain import LabelChain, Layer, NeuronpediaInfo
from neuroscope.labels.neuronpedia.cache import NeuronpediaCache
from neuroscope.labels.neuronpedia.registry import NeuronpediaIds, RegistryError, lookup
from neuroscope.labels.table import LabelError, Labels
from neuroscope.store import jsonl, paths


def _index(value, d_sae: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < d_sae:
        return None
    return value


def _score(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_autointerp(labeler: str, ns: paths.Namespace, d_sae: int) -> Layer:
    """The labeler's ``labels.jsonl`` (the last line of an index wins) with the scores of ``scores.jsonl`` that
    were given to the current label (the last such line wins; a score of an older label is stale)."""
    path = paths.autointerp_labels_file(labeler, ns)
    labels: dict[int, str] = {}
    descriptions: dict[int, str] = {}
    for row in jsonl.read_objects(path):
        i, label, description = _index(row.get("index"), d_sae), row.get("label"), row.get("description")
        if i is not None and isinstance(label, str) and label.strip():
            labels[i] = label.strip()
            if isinstance(description, str) and description.strip():
                descriptions[i] = description.strip()
            else:
                descriptions.pop(i, None)  # the last line wins, description and all
    scores: dict[int, float] = {}
    for row in jsonl.read_objects(paths.autointerp_scores_file(labeler, ns)):
        i, score, label = _index(row.get("index"), d_sae), _score(row.get("score")), row.get("label")
        if i in labels and score is not None and isinstance(label, str) and label.strip() == labels[i]:
            scores[i] = score
    return Layer("autointerp", str(path), {i: (label, scores.get(i)) for i, label in labels.items()}, descriptions)


def read_file_layer(name: str, path: str | Path, d_sae: int) -> Layer:
    """A JSON label map (``--labels-path``, the legacy auto-interp file, the demo's labels) as one source."""
    lab = Labels.load(path, d_sae)
    return Layer(name, lab.source, {i: (label, lab.scores.get(i)) for i, label in lab._map.items()})


def read_neuronpedia(ids: NeuronpediaIds, d_sae: int) -> tuple[Layer, set[int]]:
    """The cached answers: labels, and the features Neuronpedia recently said it has none for."""
    cache = NeuronpediaCache(ids.model_id, ids.source_id, d_sae)
    answers = cache.load()
    layer = Layer("neuronpedia", str(cache.path),
                  {i: (a.label, a.score) for i, a in answers.items() if a.label is not None})
    return layer, {i for i, a in answers.items() if a.label is None and a.fresh()}


def build_chain(ns: paths.Namespace, d_sae: int, *, labels_path: str | None = None, labeler: str | None = None,
                demo_labels_path: str | Path | None = None, threshold: float = 0.5,
                neuronpedia: bool = True) -> LabelChain:
    """Every source of ``ns``'s SAE, best first. ``labels_path`` errors propagate (:class:`LabelError`); a broken
    cache file becomes a warning. ``neuronpedia=False`` leaves Neuronpedia out (the demo)."""
    from neuroscope.config import default_labeler

    labeler = labeler or default_labeler()
    layers: list[Layer] = []
    warnings: list[str] = []
    if labels_path:
        layers.append(read_file_layer("labels-path", labels_path, d_sae))
    layers.append(read_autointerp(labeler, ns, d_sae))
    legacy = paths.legacy_autointerp_labels_file(ns)
    if legacy.is_file():
        try:
            layers.append(read_file_layer("autointerp-legacy", legacy, d_sae))
        except LabelError as exc:
            warnings.append(f"skipped the legacy auto-interp labels: {exc}")
    info = NeuronpediaInfo()
    none: set[int] = set()
    ids, problem = None, None
    if neuronpedia:
        try:
            ids = lookup(ns)
        except RegistryError as exc:
            problem = str(exc)
            warnings.append(problem)
    if not neuronpedia:
        info.skipped = "not for the built-in demo"
    elif problem is not None:
        info.skipped = problem
    elif ids is None:
        info.skipped = "this model / SAE is not in Neuronpedia's registry"
    elif ids.d_sae != d_sae:
        info.skipped = f"Neuronpedia's {ids} has {ids.d_sae} features, the SAE {d_sae}"
        ids = None
    if ids is not None:
        info.ids = ids
        np_layer, none = read_neuronpedia(ids, d_sae)
        layers.append(np_layer)
    if demo_labels_path:
        layers.append(read_file_layer("demo", demo_labels_path, d_sae))
    return LabelChain(d_sae, layers, threshold=threshold, neuronpedia=info, warnings=warnings, np_none=none)
