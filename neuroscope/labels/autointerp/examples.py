"""Phase 1 of labelling: a corpus pass that keeps, for every SAE feature, its top-N activating windows.

The pass is :mod:`neuroscope.calibration.driver`'s, the one ``calibrate run`` drives: each sample ``[BOS] + text``
cut to ``max_tokens_per_sample``, batched by index (batch j holds samples ``j*bs .. (j+1)*bs-1``), so a resumed
run sees the same batches as an uninterrupted one. The backend returns each position's packed top-k record (loaded with a large k, 128 by
default, so a window's activations are exact unless a token had more than k features firing: ``l0`` in the
record says so and the count of such positions is reported). Records are folded batch by batch into bounded
per-feature slots (:class:`~neuroscope.labels.autointerp.collector.Collector`) and never kept:

* **top windows**: per sample and feature, the position of its largest activation (earliest on ties); per
  feature the N largest of those over the corpus (equal values: the earlier sample wins). A window is that
  position with up to ``BEFORE`` tokens before it and ``AFTER`` after (never the BOS at position 0), with every
  token's activation of the feature (0 at specials);
* **random windows**: one window per sample at a position drawn from a hash of the sample index, the ``pool``
  samples with the smallest hash kept, each with the set of features that fired anywhere in it. A feature's
  non-activating windows for detection scoring are the pool windows where it never fired;
* **activation-range windows**: per feature a uniform sample (``per_feature`` of them) of the positions where it
  fired, whatever the activation — each (sample, position, feature) gets a hash key and the smallest keys are
  kept, at most one position per sample — each with its window. Ranked, they cover its activation quantiles
  (:func:`quantile_windows`, deciles as in EleutherAI delphi), so labels and scoring see more than the peak;
* how often each feature fired (a feature that never did is *dead*), and a histogram of its nonzero activations
  (log-spaced bins, :data:`~neuroscope.labels.autointerp.collector.HIST_EDGES`).

Every ``checkpoint_every`` samples the whole state is written atomically (one ``.npz``); a killed run resumes
from it and ends with byte-identical arrays. A finished run is ``examples.npz`` + ``meta.json`` (written last:
a directory with a ``meta.json`` is complete) under :func:`neuroscope.store.paths.examples_dir`.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from neuroscope.calibration import stats
from neuroscope.calibration.driver import (CHECKPOINT_EVERY, DEFAULT_BATCH_SIZE, DEFAULT_MAX_TOKENS, CorpusPassError,
                                           PassSettings, corpus_key, drive, read_samples, sha)
from neuroscope.labels.autointerp.collector import AFTER, BEFORE, Collector, load_npz, npz_bytes
from neuroscope.runtime import Runtime
from neuroscope.store import atomic, paths

__all__ = ["AFTER", "BEFORE", "Collector", "Examples", "ExamplesError", "ExamplesOptions", "ExamplesRun", "Window",
           "PoolWindow", "example_window", "newest", "quantile_windows", "read", "render", "run"]

FORMAT = "neuroscope-examples/2"  # /2 adds the activation-range sample (q_* arrays)
READABLE = (FORMAT, "neuroscope-examples/1")  # a /1 run reads back without range windows
STATE_FORMAT = "neuroscope-examples-checkpoint/1"
DATA = "examples.npz"
META = "meta.json"
STATE = "state.npz"
DEFAULT_SAMPLES = 5000
DEFAULT_PER_FEATURE = 20
DEFAULT_TOP_K = 128  # Gemma Scope 16k averages ~71 features per token: 128 keeps windows (nearly) exact


class ExamplesError(RuntimeError):
    """The examples pass cannot run or its files cannot be read; the message is one user-facing line."""


@dataclass
class ExamplesOptions:
    corpus_path: str | None = None
    samples: int = DEFAULT_SAMPLES
    per_feature: int = DEFAULT_PER_FEATURE
    batch_size: int = DEFAULT_BATCH_SIZE
    max_tokens_per_sample: int = DEFAULT_MAX_TOKENS
    pool: int = 0  # random windows kept; 0: max(64, 3 * per_feature)
    checkpoint_every: int = CHECKPOINT_EVERY

    @property
    def pool_size(self) -> int:
        return self.pool or max(64, 3 * self.per_feature)

    def validate(self) -> None:
        for name, value, low in (("--samples", self.samples, 1), ("--examples-per-feature", self.per_feature, 1),
                                 ("--batch-size", self.batch_size, 1), ("--max-tokens-per-sample",
                                                                        self.max_tokens_per_sample, 2),
                                 ("checkpoint interval", self.checkpoint_every, 1)):
            if value < low:
                raise ValueError(f"{name} must be at least {low}, got {value}")


@dataclass(frozen=True)
class Window:
    tokens: np.ndarray  # (n,) int32 token ids
    acts: np.ndarray  # (n,) float32: this feature's activation at each token (0: did not fire)
    peak: int  # index of the strongest token inside the window
    value: float  # its activation
    sample: int  # the sample's index in the corpus order of the run
    start: int  # the window's first position in the sample


@dataclass(frozen=True)
class PoolWindow:
    tokens: np.ndarray
    fired: frozenset[int]  # the features that fired somewhere in it
    sample: int
    start: int


# ------------------------------------------------------------------------------------------------ results
@dataclass
class Examples:
    """A finished examples run, read back."""

    directory: Path
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def d_sae(self) -> int:
        return int(self.meta["d_sae"])

    @property
    def fired(self) -> np.ndarray:
        return self.arrays["fired"]

    def windows(self, index: int) -> list[Window]:
        """Feature ``index``'s top windows, strongest first."""
        a = self.arrays
        lo, hi = np.searchsorted(a["feature"], [index, index + 1])
        off = a["offset"]
        return [Window(a["tokens"][off[i]:off[i + 1]], a["acts"][off[i]:off[i + 1]], int(a["peak"][i]),
                       float(a["value"][i]), int(a["sample"][i]), int(a["start"][i])) for i in range(lo, hi)]

    def range_windows(self, index: int) -> list[Window]:
        """Feature ``index``'s activation-range sample: windows around positions drawn uniformly from where it
        fired, strongest first ([] for a run made before the sample was kept)."""
        a = self.arrays
        if "q_feature" not in a:
            return []
        lo, hi = np.searchsorted(a["q_feature"], [index, index + 1])
        off = a["q_offset"]
        return [Window(a["q_tokens"][off[i]:off[i + 1]], a["q_acts"][off[i]:off[i + 1]], int(a["q_peak"][i]),
                       float(a["q_value"][i]), int(a["q_sample"][i]), int(a["q_start"][i])) for i in range(lo, hi)]

    def density(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Feature ``index``'s histogram of nonzero activations over the run, (edges, counts) cut to the bins
        from its first to its last nonempty one; None when it never fired or the run kept no histogram."""
        a = self.arrays
        if "hist" not in a:
            return None
        counts = a["hist"][index]
        nz = np.flatnonzero(counts)
        if not nz.size:
            return None
        lo, hi = int(nz[0]), int(nz[-1]) + 1
        return a["hist_edges"][lo:hi + 1], counts[lo:hi]

    def pool(self) -> list[PoolWindow]:
        a = self.arrays
        po, pf = a["pool_offset"], a["pool_feature_offset"]
        return [PoolWindow(a["pool_tokens"][po[i]:po[i + 1]],
                           frozenset(int(x) for x in a["pool_features"][pf[i]:pf[i + 1]]),
                           int(a["pool_sample"][i]), int(a["pool_start"][i])) for i in range(len(a["pool_hash"]))]


def read(directory: str | Path) -> Examples:
    d = Path(directory)
    try:
        meta = json.loads((d / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ExamplesError(f"no finished examples run in {d}") from None
    if not isinstance(meta, dict) or meta.get("format") not in READABLE:
        raise ExamplesError(f"{d / META} is not a {FORMAT} file")
    arrays = load_npz(d / DATA)
    if arrays is None:
        raise ExamplesError(f"{d / DATA} is missing or unreadable")
    return Examples(d, meta, arrays)


@functools.lru_cache(maxsize=2)
def _read_cached(directory: str, stamp: tuple[int, int]) -> Examples:
    return read(directory)


def newest(ns: paths.Namespace) -> Examples | None:
    """The newest complete examples run of ``ns`` (by its ``created`` time), or None. Read once per run and
    kept while its files are unchanged, so asking for one feature after another does not re-read them."""
    root = paths.examples_root() / ns.path
    found: list[tuple[str, Path]] = []
    if root.is_dir():
        for d in root.iterdir():
            try:
                meta = json.loads((d / META).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict) and meta.get("format") in READABLE:
                found.append((str(meta.get("created", "")), d))
    for _, d in sorted(found, reverse=True):
        try:
            meta_stat, data_stat = (d / META).stat(), (d / DATA).stat()
            return _read_cached(str(d), (meta_stat.st_mtime_ns, data_stat.st_mtime_ns))
        except (OSError, ExamplesError):
            continue
    return None


QUANTILES = 10  # the activation range cut in deciles (EleutherAI delphi's default)


def quantile_windows(windows: list[Window], bins: int = QUANTILES) -> list[tuple[int, Window]]:
    """A uniform sample of windows (strongest first) as (quantile, window): quantile 1 is the weakest tenth of
    the feature's activations, ``bins`` the strongest, by each window's rank in the sample."""
    n = len(windows)
    return [(bins - (bins * r) // n, w) for r, w in enumerate(windows)]


def render(tokenizer: Any, tokens: np.ndarray, marked: np.ndarray | None = None) -> str:
    """The window as one line of text; runs of ``marked`` tokens wrapped in ``<<`` ``>>``. Each token's text is
    what it adds to the decoded prefix, so multi-token characters stay whole."""
    ids = [int(t) for t in tokens]
    pieces, prev = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.endswith("\ufffd") and i + 1 < len(ids):  # half a character: it comes with the next token
            pieces.append("")
            continue
        same = 0
        while same < min(len(text), len(prev)) and text[same] == prev[same]:
            same += 1
        pieces.append(text[same:])
        prev = text
    out, inside = [], False
    for i, piece in enumerate(pieces):
        mark = bool(marked[i]) if marked is not None else False
        if mark and not inside:
            out.append("<<")
        elif not mark and inside:
            out.append(">>")
        inside = mark
        out.append(piece)
    if inside:
        out.append(">>")
    return "".join(out).replace("\r", "\\r").replace("\n", "\\n")


def example_window(ns: paths.Namespace, index: int, tokenizer: Any) -> str | None:
    """Feature ``index``'s highest-activating window from the newest complete examples run of ``ns``, its max
    token marked ``<<token>>``; None when there is no run or the feature never fired in it."""
    ex = newest(ns)
    if ex is None or not 0 <= index < ex.d_sae:
        return None
    windows = ex.windows(index)
    if not windows:
        return None
    w = windows[0]
    marked = np.zeros(len(w.tokens), dtype=bool)
    marked[w.peak] = True
    return render(tokenizer, w.tokens, marked)


# ------------------------------------------------------------------------------------------------ the pass
@dataclass
class ExamplesRun:
    examples: Examples
    up_to_date: bool
    resumed_from: int
    samples_in_corpus: int
    elapsed_s: float = 0.0
    tokens_processed: int = 0


def namespace(rt: Runtime) -> paths.Namespace:
    c = rt.config
    return stats.namespace_for(c.model, c.sae, c.sae_path, c.sae_local_path, c.sae_layer, c.sae_input_norm,
                                     demo=rt.demo)


def run(rt: Runtime, opts: ExamplesOptions, *, console: Console | None = None) -> ExamplesRun:
    """Collect (or reuse, or resume) the examples of ``rt``'s model + SAE over the corpus."""
    try:
        opts.validate()
    except ValueError as exc:
        raise ExamplesError(str(exc)) from None
    try:
        root, samples = read_samples(opts.corpus_path, opts.samples, console)
    except CorpusPassError as exc:
        raise ExamplesError(str(exc)) from None
    ns, d_sae, info = namespace(rt), rt.sae.d_sae, rt.info
    k = min(rt.config.top_k, d_sae)
    key = sha({
        "format": FORMAT, "identity": stats.identity(ns, d_sae), "corpus": corpus_key(samples),
        "samples": len(samples), "batch_size": opts.batch_size, "max_tokens": opts.max_tokens_per_sample,
        "per_feature": opts.per_feature, "pool": opts.pool_size, "window": [BEFORE, AFTER], "top_k": k,
        "backend": rt.backend.name, "dtype": info.dtype,
    })
    out = paths.examples_dir(ns, key[:16])
    ckdir = paths.checkpoint_dir("examples", ns, key[:16])
    meta_path = out / META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") == key and meta.get("sha256") == paths.file_sha256(out / DATA):
            return ExamplesRun(read(out), True, len(samples), len(samples))
    except (OSError, ValueError, AttributeError, ExamplesError):
        pass

    col = Collector(d_sae, opts.per_feature, opts.pool_size, k)
    state = load_npz(ckdir / STATE)
    if state is not None and "key" in state and str(state["key"]) == key:
        col = Collector.from_state(state, opts.per_feature, opts.pool_size, k)
    resumed = col.samples_done
    ckdir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_tmp(ckdir)

    def save() -> None:
        atomic.write_bytes(ckdir / STATE, npz_bytes({**col.state(), "key": np.asarray(key)}))

    started = time.perf_counter()
    settings = PassSettings(opts.batch_size, opts.max_tokens_per_sample, opts.checkpoint_every)
    processed = drive(rt.backend, info.tokenizer, samples, col, settings, save, label="collecting examples",
                      console=console)
    if col.tokens < 1:
        raise ExamplesError(f"no token of the {len(samples)} samples counted (each sample needs a token after BOS)")
    out.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_tmp(out)
    meta_path.unlink(missing_ok=True)  # incomplete until the new meta lands
    atomic.write_bytes(out / DATA, npz_bytes(col.arrays()))
    meta = {
        "format": FORMAT, "key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        + f".{time.time_ns() % 1_000_000_000:09d}Z",
        "namespace": ns.as_dict(), "d_sae": d_sae, "samples": len(samples), "tokens": col.tokens,
        "per_feature": opts.per_feature, "pool": opts.pool_size, "window": [BEFORE, AFTER], "top_k": k,
        "truncated_positions": col.truncated, "corpus": str(root), "sample_names": [s.name for s in samples],
        "sha256": paths.file_sha256(out / DATA),
    }
    atomic.write_json(meta_path, meta)
    shutil.rmtree(ckdir, ignore_errors=True)
    return ExamplesRun(read(out), False, resumed, len(samples), time.perf_counter() - started, processed)
