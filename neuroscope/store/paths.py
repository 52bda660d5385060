"""Where Neuroscope keeps its files: every path under the cache comes from here.

Layout (``<cache>`` is :func:`cache_dir`)::

    <cache>/demo/v<N>/                                     the demo checkpoint
    <cache>/bench/                                         benchmark checkpoints
    <cache>/corpus/<dataset>/<config>/<split>/             the downloaded text corpus (one .txt per sample)
    <cache>/checkpoints/<task>/<namespace>/<run>/          corpus-pass checkpoints (calibration, label examples)
    <cache>/calibration/<namespace>/calibration.json       calibration statistics
    <cache>/examples/<namespace>/<run>/                    label examples (top activating windows per feature)
    <cache>/autointerp_labels/<labeler>/<namespace>/labels.jsonl   auto-interp labels, per labeler
    <cache>/autointerp_labels/<labeler>/<namespace>/scores.jsonl   their detection scores (any scorer)
    <cache>/autointerp_labels/<labeler>/<namespace>/failed.jsonl   features whose labelling failed
    <cache>/autointerp_labels/<labeler>/<namespace>/dead.json      features that never fired in the examples pass
    <cache>/autointerp_labels/<namespace>/labels.json      auto-interp labels, legacy (no labeler)
    <cache>/neuronpedia/<model id>/<source id>/explanations.jsonl   answers from Neuronpedia
    <cache>/neuronpedia/<model id>/<source id>/export.json         which bulk-export batches are merged in
    <cache>/trash/<timestamp>-<what>/                      what ``clean`` moved away
    <cache>/inductor/                                      torch inductor's kernels (``--engine compiled``)

``<namespace>`` is :attr:`Namespace.path`: model / SAE (repo + file, or a local file's hash) / layer / input norm,
so two SAEs never share a file.
Every name taken from user input goes through :func:`safe_component`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CACHE_ENV = "NEUROSCOPE_CACHE"

_SAFE = re.compile(r"[A-Za-z0-9._-]")
_LOCAL_SAE = re.compile(r"local-sha256-[0-9a-f]{64}")
_MAX_COMPONENT = 100
_HASH_CHARS = 10


def cache_dir() -> Path:
    """``$NEUROSCOPE_CACHE``, else ``$XDG_CACHE_HOME/neuroscope``, else ``~/.cache/neuroscope``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "neuroscope"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_CHARS]


def safe_component(text: str) -> str:
    """One readable, filesystem-safe path component for ``text``, distinct for distinct texts.

    ``/`` becomes ``__`` and other characters outside ``[A-Za-z0-9._-]`` become ``-``
    (``google/gemma-2-2b-it`` → ``google__gemma-2-2b-it``). When that rewrite cannot be undone (the text had
    other characters, ``__`` of its own, a leading dot, or is too long), ``~`` and a hash of the exact text are
    appended, so two texts never share a component; ``~`` never appears otherwise.
    """
    slug = "".join(ch if _SAFE.fullmatch(ch) else ("__" if ch == "/" else "-") for ch in text)
    lossless = (
        bool(text)
        and slug.replace("__", "/") == text
        and not slug.startswith(".")
        and len(slug) <= _MAX_COMPONENT
    )
    if lossless:
        return slug
    slug = slug.lstrip(".")[:_MAX_COMPONENT] or "_"
    return f"{slug}~{_digest(text)}"


SAE_WEIGHT_FILES = ("params.npz", "params.safetensors", "sae_weights.safetensors")  # neuroscope.core.sae_formats


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Namespace:
    """Which model, SAE, layer and input norm some cached data belongs to.

    A hub SAE is its repo (``sae``) and the file in it (``sae_path``). A local SAE file is
    ``sae = "local-sha256-<hex>"`` with no ``sae_path``: its content, not its location, identifies it (a moved
    file keeps its data, an edited one does not).
    """

    model: str
    sae: str
    sae_path: str | None
    layer: int
    input_norm: str = "none"

    def __post_init__(self) -> None:
        if self.sae_path is None and not _LOCAL_SAE.fullmatch(self.sae):
            raise ValueError(f"a hub SAE needs its file (sae_path); a local one is local-sha256-<hex>: {self.sae!r}")

    @classmethod
    def for_hub_sae(cls, model: str, repo: str, path: str, layer: int, input_norm: str = "none") -> Namespace:
        return cls(model=model, sae=repo, sae_path=path, layer=layer, input_norm=input_norm)

    @classmethod
    def for_local_sae(cls, model: str, file: str | Path, layer: int, input_norm: str = "none") -> Namespace:
        """``file`` is a ``params.npz`` or an SAE directory (``params.npz``, or a Gemma Scope 2 / SAELens directory:
        named by its weights file), as ``--sae-local-path`` accepts."""
        p = Path(file).expanduser()
        if p.is_dir():
            p = next((p / n for n in SAE_WEIGHT_FILES if (p / n).is_file()), p / SAE_WEIGHT_FILES[0])
        return cls(model=model, sae=f"local-sha256-{file_sha256(p)}", sae_path=None, layer=layer,
                   input_norm=input_norm)

    @property
    def is_local(self) -> bool:
        return self.sae_path is None

    @property
    def path(self) -> PurePosixPath:
        """Relative: ``<model>/<sae repo>/<sae path>/layer_<N>/norm_<norm>`` for a hub SAE,
        ``<model>/local-sha256-<16 hex>/layer_<N>/norm_<norm>`` for a local one; parts from :func:`safe_component`."""
        if self.is_local:
            sae: tuple[str, ...] = (self.sae[: len("local-sha256-") + 16],)  # 64 bits of the hash: short, unique
        else:
            sae = (safe_component(self.sae), safe_component(str(self.sae_path)))
        return PurePosixPath(
            safe_component(self.model), *sae, f"layer_{int(self.layer)}", f"norm_{safe_component(self.input_norm)}"
        )

    def as_dict(self) -> dict:
        return {"model": self.model, "sae": self.sae, "sae_path": self.sae_path, "layer": self.layer,
                "input_norm": self.input_norm}


# --------------------------------------------------------------------------------------------------- roots
def demo_dir(version: int) -> Path:
    return cache_dir() / "demo" / f"v{version}"


def bench_dir() -> Path:
    return cache_dir() / "bench"


def corpus_root() -> Path:
    return cache_dir() / "corpus"


def checkpoints_root() -> Path:
    return cache_dir() / "checkpoints"


def calibration_root() -> Path:
    return cache_dir() / "calibration"


def examples_root() -> Path:
    return cache_dir() / "examples"


def autointerp_root() -> Path:
    return cache_dir() / "autointerp_labels"


def neuronpedia_root() -> Path:
    return cache_dir() / "neuronpedia"


def trash_dir() -> Path:
    return cache_dir() / "trash"


def data_roots() -> dict[str, Path]:
    """The directories of generated or downloaded data, by the name ``clean`` gives them."""
    return {
        "corpus": corpus_root(),
        "checkpoints": checkpoints_root(),
        "calibration": calibration_root(),
        "examples": examples_root(),
        "labels": autointerp_root(),
        "neuronpedia": neuronpedia_root(),
        "inductor": inductor_dir(),
    }


# --------------------------------------------------------------------------------------------------- files
def corpus_dir(dataset: str, config: str, split: str) -> Path:
    return corpus_root() / safe_component(dataset) / safe_component(config) / safe_component(split)


def checkpoint_dir(task: str, namespace: Namespace, run: str) -> Path:
    """Checkpoints of one corpus pass: ``task`` (``calibration``, ``examples``…), whose data, and ``run`` (a key
    of the options that change the result, e.g. the corpus and sample count)."""
    return checkpoints_root() / safe_component(task) / namespace.path / safe_component(run)


def calibration_file(namespace: Namespace) -> Path:
    return calibration_root() / namespace.path / "calibration.json"


def examples_dir(namespace: Namespace, run: str) -> Path:
    """Phase 1 of labelling for one SAE: ``run`` is a key of the corpus and the options that change the result."""
    return examples_root() / namespace.path / safe_component(run)


def autointerp_dir(labeler: str, namespace: Namespace) -> Path:
    """Where one labeler's labels (and its scores, failures, dead-feature list) for one SAE live."""
    return autointerp_root() / safe_component(labeler) / namespace.path


def autointerp_labels_file(labeler: str, namespace: Namespace) -> Path:
    return autointerp_dir(labeler, namespace) / "labels.jsonl"


def autointerp_scores_file(labeler: str, namespace: Namespace) -> Path:
    return autointerp_dir(labeler, namespace) / "scores.jsonl"


def autointerp_failed_file(labeler: str, namespace: Namespace) -> Path:
    return autointerp_dir(labeler, namespace) / "failed.jsonl"


def autointerp_dead_file(labeler: str, namespace: Namespace) -> Path:
    return autointerp_dir(labeler, namespace) / "dead.json"


def legacy_autointerp_labels_file(namespace: Namespace) -> Path:
    return autointerp_root() / namespace.path / "labels.json"


def neuronpedia_dir(model_id: str, source_id: str) -> Path:
    return neuronpedia_root() / safe_component(model_id) / safe_component(source_id)


def neuronpedia_file(model_id: str, source_id: str) -> Path:
    """One JSON line per feature asked: ``{"index", "label"|null, "score"?, "fetched_at"}`` (null: none exists)."""
    return neuronpedia_dir(model_id, source_id) / "explanations.jsonl"


def neuronpedia_export_state_file(model_id: str, source_id: str) -> Path:
    """``labels fetch``'s progress through Neuronpedia's bulk export: the batches already merged into the cache."""
    return neuronpedia_dir(model_id, source_id) / "export.json"


def trash_entry(timestamp: str, what: str) -> Path:
    return trash_dir() / f"{safe_component(timestamp)}-{safe_component(what)}"


def inductor_dir() -> Path:
    """``<cache>/inductor``: torch inductor's compiled kernels for the compiled decode step (reused across runs)."""
    return cache_dir() / "inductor"
