"""The label chain: for every feature, the first source that has a label wins.

Sources, best first: ``labels-path`` (``--labels-path``), ``autointerp`` (the chosen labeler's labels),
``autointerp-legacy``, ``neuronpedia`` (the cache, filled lazily while serving), ``demo`` (the demo's example
labels); a feature none of them names is ``numeric`` (``feature_<i>``). A :class:`LabelChain` is a
:class:`~neuroscope.labels.table.Labels` (the engine and the label map use it as before) that also knows each label's
source and score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from neuroscope.labels.neuronpedia.cache import Answer
from neuroscope.labels.neuronpedia.registry import NeuronpediaIds
from neuroscope.labels.table import Labels

SOURCES = ("labels-path", "autointerp", "autointerp-legacy", "neuronpedia", "demo")
NUMERIC = "numeric"
_RANK = {name: i for i, name in enumerate(SOURCES)}


@dataclass(frozen=True, slots=True)
class Entry:
    label: str
    source: str
    score: float | None = None
    description: str | None = None  # the labeler's longer account of the feature, when it gave one


@dataclass
class Layer:
    """One source's labels: ``where`` is the file they came from (for the map's ``source``)."""

    name: str
    where: str
    labels: dict[int, tuple[str, float | None]] = field(default_factory=dict)
    descriptions: dict[int, str] = field(default_factory=dict)


@dataclass
class NeuronpediaInfo:
    """What the chain says about its Neuronpedia source: ids, or why it is skipped."""

    ids: NeuronpediaIds | None = None
    skipped: str | None = None  # why there is no Neuronpedia source
    lazy: object | None = None  # the LazyNeuronpedia while serving
    probe: object | None = None  # a thread checking that Neuronpedia is reachable (see runtime.finish_probe)


class LabelChain(Labels):
    def __init__(self, d_sae: int, layers: list[Layer], *, threshold: float = 0.5,
                 neuronpedia: NeuronpediaInfo | None = None, warnings: list[str] | None = None,
                 np_none: set[int] | None = None):
        order = sorted(layers, key=lambda lay: _RANK[lay.name])
        self.layers = {lay.name: lay for lay in order}
        self.threshold = threshold
        self.neuronpedia = neuronpedia or NeuronpediaInfo(skipped="not asked")
        self.warnings = list(warnings or [])
        self._entries: dict[int, Entry] = {}
        for lay in reversed(order):  # the best source is written last and wins
            for i, (label, score) in lay.labels.items():
                self._entries[i] = Entry(label, lay.name, score, lay.descriptions.get(i))
        self._np_none: set[int] = set(np_none or ())  # features Neuronpedia has no label for (fresh answers)
        self._seen: set[int] = set()
        self.version = 0  # bumped whenever a label changes (a search index rebuilds on it)
        super().__init__(d_sae, {i: e.label for i, e in self._entries.items()}, source="fallback")

    @classmethod
    def of(cls, labels: Labels) -> "LabelChain":
        """A plain label file as a chain of one source."""
        if isinstance(labels, LabelChain):
            return labels
        layers = [Layer("labels-path", labels.source, {i: (l, labels.scores.get(i)) for i, l in labels._map.items()})]
        return cls(labels.d_sae, layers if labels.source != "fallback" else [])

    # ------------------------------------------------------------------------------------------ reading
    @property
    def source(self) -> str:
        """The file of the best source that names any feature, or ``fallback`` (the label map's ``source``)."""
        for lay in self.layers.values():
            if lay.labels:
                return lay.where
        return "fallback"

    @source.setter
    def source(self, value: str) -> None:  # Labels.__init__ sets it; the chain derives it
        pass

    def entry(self, index: int) -> Entry:
        return self._entries.get(index) or Entry(f"feature_{index}", NUMERIC)

    def detail(self) -> dict[str, dict]:
        """``{"<index>": {"label", "source", "score"?, "low_confidence"?, "description"?}}`` for every feature."""
        out = {}
        for i in range(self.d_sae):
            e = self.entry(i)
            d: dict = {"label": e.label, "source": e.source}
            if e.description:
                d["description"] = e.description
            if e.score is not None:
                d["score"] = e.score
                if e.score < self.threshold:
                    d["low_confidence"] = True
            out[str(i)] = d
        return out

    def counts(self) -> dict[str, int]:
        """How many features each source labels (every source listed, ``numeric`` included)."""
        c = dict.fromkeys((*SOURCES, NUMERIC), 0)
        for e in list(self._entries.values()):
            c[e.source] += 1
        c[NUMERIC] = self.d_sae - len(self._entries)
        return c

    # ------------------------------------------------------------------------------------------ Neuronpedia
    def wants_neuronpedia(self, index: int) -> bool:
        """Whether asking Neuronpedia could improve this feature's label."""
        e = self._entries.get(index)
        if e is not None and _RANK[e.source] <= _RANK["neuronpedia"]:
            return False
        return index not in self._np_none

    def observe(self, indices) -> None:
        """Features that appeared in the stream (called on the generation thread): ask Neuronpedia lazily, once
        per feature, for those no better source names."""
        lazy = self.neuronpedia.lazy
        if lazy is None:
            return
        for i in indices:
            if i in self._seen:
                continue
            self._seen.add(i)
            if self.wants_neuronpedia(i):
                lazy.want(i)

    def add_neuronpedia(self, answer: Answer) -> None:
        """A Neuronpedia answer (on the event loop): it labels the feature unless a better source does."""
        i = answer.index
        if not 0 <= i < self.d_sae:
            return
        lay = self.layers.get("neuronpedia")
        if answer.label is None:
            self._np_none.add(i)
            return
        if lay is not None:
            lay.labels[i] = (answer.label, answer.score)
        current = self._entries.get(i)
        if current is None or _RANK[current.source] > _RANK["neuronpedia"]:
            self._entries[i] = Entry(answer.label, "neuronpedia", answer.score)
            self._map[i] = answer.label
            self.version += 1
