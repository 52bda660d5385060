"""Phase 1 of labelling: a corpus pass that keeps, for every SAE feature, its top-N activating windows.

Each sample is ``[BOS] + text`` cut to ``max_tokens_per_sample`` and batched by index exactly as ``calibrate run``
batches it (batch j holds samples ``j*bs .. (j+1)*bs-1``), so a resumed run sees the same batches as an
uninterrupted one. The backend returns each position's packed top-k record (loaded with a large k, 128 by
default, so a window's activations are exact unless a token had more than k features firing: ``l0`` in the
record says so and the count of such positions is reported). Records are folded batch by batch into bounded
per-feature heaps and never kept:

* **top windows**: per sample and feature, the position of its largest activation (earliest on ties); per
  feature the N largest of those over the corpus (equal values: the earlier sample wins). A window is that
  position with up to ``BEFORE`` tokens before it and ``AFTER`` after (never the BOS at position 0), with every
  token's activation of the feature (0 at specials);
* **random windows**: one window per sample at a position drawn from a hash of the sample index, the ``pool``
  samples with the smallest hash kept, each with the set of features that fired anywhere in it. A feature's
  non-activating windows for detection scoring are the pool windows where it never fired;
* how often each feature fired (a feature that never did is *dead*).

Every ``checkpoint_every`` samples the whole state is written atomically (one ``.npz``); a killed run resumes
from it and ends with byte-identical arrays. A finished run is ``examples.npz`` + ``meta.json`` (written last:
a directory with a ``meta.json`` is complete) under :func:`neuroscope.store.paths.examples_dir`.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import io
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from neuroscope.calibration import corpus, corpus_pass
from neuroscope.calibration import stats as calibration

# the corpus pass's knobs are calibration's: the same batches, sample length and checkpoint interval
from neuroscope.calibration.run import CHECKPOINT_EVERY, DEFAULT_BATCH_SIZE, DEFAULT_MAX_TOKENS
from neuroscope.progress import JobProgress
from neuroscope.runtime import Runtime
from neuroscope.store import atomic, paths

FORMAT = "neuroscope-examples/1"
STATE_FORMAT = "neuroscope-examples-checkpoint/1"
DATA = "examples.npz"
META = "meta.json"
STATE = "state.npz"
BEFORE, AFTER = 23, 8  # a window: the peak token with up to 23 tokens before it and 8 after
WINDOW = BEFORE + 1 + AFTER  # 32 tokens
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


# ------------------------------------------------------------------------------------------------ collecting
class Collector:
    """The bounded per-feature top windows and the random pool, fed one sample's records at a time.

    Windows live in preallocated ``(d_sae, N, W)`` arrays (token ids and activations), one slot per kept window,
    and a sample's candidates are placed all at once (no per-window Python work); ``floor`` is each full
    feature's weakest kept value, below which a candidate is dropped. A checkpoint is these arrays as they are.
    """

    def __init__(self, d_sae: int, per_feature: int, pool_size: int, k: int):
        self.d_sae, self.per_feature, self.pool_size, self.k = d_sae, per_feature, pool_size, k
        n, w = per_feature, WINDOW
        self.samples_done = self.tokens = self.truncated = 0
        self.fired = np.zeros(d_sae, dtype=np.int64)
        self.filled = np.zeros(d_sae, dtype=np.int32)
        self.value = np.zeros((d_sae, n), dtype=np.float32)
        self.sample = np.zeros((d_sae, n), dtype=np.int64)
        self.start = np.zeros((d_sae, n), dtype=np.int32)
        self.peak = np.zeros((d_sae, n), dtype=np.int32)
        self.length = np.zeros((d_sae, n), dtype=np.int32)
        self.win_tokens = np.zeros((d_sae, n, w), dtype=np.int32)
        self.win_acts = np.zeros((d_sae, n, w), dtype=np.float32)
        self.floor = np.full(d_sae, -np.inf, dtype=np.float64)
        self.pool: list[tuple] = []

    def add(self, index: int, tokens: list[int], rec: np.ndarray, counted: np.ndarray) -> None:
        """Fold in sample ``index``: its token ids, its (n, 2 + 2k) records and which positions count."""
        n = len(tokens)
        k = (rec.shape[1] - 2) // 2
        ids = rec[:, 2 : 2 + k].astype(np.int64)
        vals = rec[:, 2 + k :].astype(np.float32)
        pos, col = np.nonzero((vals > 0) & counted[:, None])
        fid, val = ids[pos, col], vals[pos, col]
        self.samples_done = max(self.samples_done, index + 1)
        self.tokens += int(counted.sum())
        self.truncated += int(((rec[:, 0] > k) & counted).sum())
        if fid.size:
            self.fired += np.bincount(fid, minlength=self.d_sae)
        order = np.lexsort((pos, -val, fid))  # by feature, strongest first, earliest first
        fid, pos, val = fid[order], pos[order], val[order]
        toks = np.asarray(tokens, dtype=np.int32)
        self._pool(index, toks, fid, pos)
        if not fid.size:
            return
        first = np.flatnonzero(np.r_[True, fid[1:] != fid[:-1]])
        beats = val[first].astype(np.float64) > self.floor[fid[first]]
        cf, cpeak, cval = fid[first][beats], pos[first][beats], val[first][beats]
        m = cf.size
        if not m:
            return
        # every candidate's window at once: a dense (n, m) map of the candidates' activations in this sample
        column = np.full(self.d_sae, -1, dtype=np.int64)
        column[cf] = np.arange(m)
        mine = column[fid] >= 0
        dense = np.zeros((n, m), dtype=np.float32)
        dense[pos[mine], column[fid[mine]]] = val[mine]
        start = np.maximum(1, cpeak - BEFORE)
        end = np.minimum(n, cpeak + AFTER + 1)
        at = start[:, None] + np.arange(WINDOW)[None, :]
        valid = at < end[:, None]
        at = np.minimum(at, n - 1)
        acts = np.where(valid, dense[at, np.arange(m)[:, None]], 0.0).astype(np.float32)
        wtoks = np.where(valid, toks[at], 0).astype(np.int32)
        # a slot per candidate (each feature appears once per sample): the next free one, or the weakest
        # window's (smallest value; of equal values the later sample's), which the candidate beats
        cap = self.per_feature
        slots = self.filled[cf].astype(np.int64)
        full = slots >= cap
        if full.any():
            rows = cf[full]
            slots[full] = np.lexsort((-self.sample[rows], self.value[rows]), axis=-1)[:, 0]
        self.filled[cf] = np.maximum(self.filled[cf], slots + 1)
        self.value[cf, slots], self.sample[cf, slots] = cval, index
        self.start[cf, slots], self.peak[cf, slots], self.length[cf, slots] = start, cpeak - start, end - start
        self.win_tokens[cf, slots], self.win_acts[cf, slots] = wtoks, acts
        now_full = self.filled[cf] >= cap
        self.floor[cf[now_full]] = self.value[cf[now_full]].min(axis=1)

    def _pool(self, index: int, toks: np.ndarray, fid: np.ndarray, pos: np.ndarray) -> None:
        n = len(toks)
        if n < 2:
            return
        h = int.from_bytes(hashlib.sha256(f"pool:{index}".encode()).digest()[:8], "big")
        if len(self.pool) >= self.pool_size and -self.pool[0][0] <= h:
            return
        start = 1 + (h >> 24) % max(1, n - WINDOW)
        end = min(n, start + WINDOW)
        inside = (pos >= start) & (pos < end)
        entry = (-h, index, start, toks[start:end].copy(), np.unique(fid[inside]).astype(np.int32))
        if len(self.pool) < self.pool_size:
            heapq.heappush(self.pool, entry)
        else:
            heapq.heapreplace(self.pool, entry)

    # ------------------------------------------------------------------------------------------ checkpoints
    _SLOT_ARRAYS = ("fired", "filled", "value", "sample", "start", "peak", "length", "win_tokens", "win_acts")

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to resume exactly."""
        return {**{k: getattr(self, k) for k in self._SLOT_ARRAYS}, **self._pool_arrays(),
                "counters": np.asarray([self.samples_done, self.tokens, self.truncated], dtype=np.int64)}

    @classmethod
    def from_state(cls, a: dict[str, np.ndarray], per_feature: int, pool_size: int, k: int) -> Collector:
        d_sae = int(a["fired"].shape[0])
        col = cls(d_sae, per_feature, pool_size, k)
        for name in cls._SLOT_ARRAYS:
            setattr(col, name, np.array(a[name], copy=True))
        col.samples_done, col.tokens, col.truncated = (int(x) for x in a["counters"])
        full = col.filled >= per_feature
        col.floor[full] = col.value[full].min(axis=1)
        po, pf = a["pool_offset"], a["pool_feature_offset"]
        col.pool = [(-int(a["pool_hash"][i]), int(a["pool_sample"][i]), int(a["pool_start"][i]),
                     a["pool_tokens"][po[i]:po[i + 1]].copy(), a["pool_features"][pf[i]:pf[i + 1]].copy())
                    for i in range(len(a["pool_hash"]))]
        heapq.heapify(col.pool)
        return col

    def _pool_arrays(self) -> dict[str, np.ndarray]:
        pool = sorted(self.pool, reverse=True)  # smallest hash first
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
        return {
            "pool_hash": np.asarray([-e[0] for e in pool], dtype=np.uint64),
            "pool_sample": np.asarray([e[1] for e in pool], dtype=np.int64),
            "pool_start": np.asarray([e[2] for e in pool], dtype=np.int32),
            "pool_offset": np.cumsum([0] + [len(e[3]) for e in pool]).astype(np.int64),
            "pool_tokens": cat([e[3] for e in pool], np.int32),
            "pool_feature_offset": np.cumsum([0] + [len(e[4]) for e in pool]).astype(np.int64),
            "pool_features": cat([e[4] for e in pool], np.int32),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The result as flat arrays: windows by feature, strongest first (equal values: earlier sample first)."""
        f, s = np.nonzero(np.arange(self.per_feature)[None, :] < self.filled[:, None])
        order = np.lexsort((self.sample[f, s], -self.value[f, s], f))
        f, s = f[order], s[order]
        lengths = self.length[f, s].astype(np.int64)
        keep = np.arange(WINDOW)[None, :] < lengths[:, None]
        return {
            "feature": f.astype(np.int32), "value": self.value[f, s], "sample": self.sample[f, s],
            "start": self.start[f, s], "peak": self.peak[f, s],
            "offset": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "tokens": self.win_tokens[f, s][keep], "acts": self.win_acts[f, s][keep],
            **self._pool_arrays(), "fired": self.fired.copy(),
            "counters": np.asarray([self.samples_done, self.tokens, self.truncated], dtype=np.int64),
        }


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError):
        return None


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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ExamplesError(f"{d / META} is not a {FORMAT} file")
    arrays = _load_npz(d / DATA)
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
            if isinstance(meta, dict) and meta.get("format") == FORMAT:
                found.append((str(meta.get("created", "")), d))
    for _, d in sorted(found, reverse=True):
        try:
            meta_stat, data_stat = (d / META).stat(), (d / DATA).stat()
            return _read_cached(str(d), (meta_stat.st_mtime_ns, data_stat.st_mtime_ns))
        except (OSError, ExamplesError):
            continue
    return None


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


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def read_samples(corpus_path: str | None, n: int, console: Console | None) -> tuple[Path, list[corpus.Sample]]:
    try:
        root = corpus.ensure_corpus(corpus_path, samples_wanted=n, console=console)
        chosen: list[corpus.Sample] = []
        for sample in corpus.iter_corpus(root):
            chosen.append(sample)
            if len(chosen) == n:
                break
    except (corpus.CorpusError, OSError) as exc:
        raise ExamplesError(str(exc)) from None
    if not chosen:
        raise ExamplesError(f"the corpus in {root} holds no text")
    return root, chosen


def namespace(rt: Runtime) -> paths.Namespace:
    c = rt.config
    return calibration.namespace_for(c.model, c.sae, c.sae_path, c.sae_local_path, c.sae_layer, c.sae_input_norm,
                                     demo=rt.demo)


def run(rt: Runtime, opts: ExamplesOptions, *, console: Console | None = None) -> ExamplesRun:
    """Collect (or reuse, or resume) the examples of ``rt``'s model + SAE over the corpus."""
    try:
        opts.validate()
    except ValueError as exc:
        raise ExamplesError(str(exc)) from None
    root, samples = read_samples(opts.corpus_path, opts.samples, console)
    ns, d_sae, info = namespace(rt), rt.sae.d_sae, rt.info
    k = min(rt.config.top_k, d_sae)
    key = _sha({
        "format": FORMAT, "identity": calibration.identity(ns, d_sae),
        "corpus": _sha([[s.name, hashlib.sha256(s.text.encode("utf-8")).hexdigest()] for s in samples]),
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
    state = _load_npz(ckdir / STATE)
    if state is not None and "key" in state and str(state["key"]) == key:
        col = Collector.from_state(state, opts.per_feature, opts.pool_size, k)
    resumed = col.samples_done
    ckdir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_tmp(ckdir)

    tok = info.tokenizer
    skip, pad = corpus_pass.special_ids(tok), corpus_pass.pad_id(tok)
    bs, every = opts.batch_size, opts.checkpoint_every
    started, processed = time.perf_counter(), 0
    with JobProgress(console) as progress:
        bar = progress.items("collecting examples", len(samples), completed=col.samples_done)
        for start in range(col.samples_done, len(samples), bs):
            ids = [corpus_pass.tokenize(tok, s.text, opts.max_tokens_per_sample) for s in samples[start:start + bs]]
            batch = corpus_pass.make_batch(ids, skip, pad)
            result = rt.backend.corpus_pass(batch, records=True)
            before = col.samples_done
            for b, (sample_ids, rec) in enumerate(zip(ids, result.records)):
                col.add(start + b, sample_ids, np.asarray(rec), batch.counted[b, : len(sample_ids)])
            processed += sum(len(x) for x in ids)
            bar.advance(len(ids), tokens=processed)
            if col.samples_done // every > before // every and col.samples_done < len(samples):
                atomic.write_bytes(ckdir / STATE, _npz_bytes({**col.state(), "key": np.asarray(key)}))
    if col.tokens < 1:
        raise ExamplesError(f"no token of the {len(samples)} samples counted (each sample needs a token after BOS)")
    out.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_tmp(out)
    meta_path.unlink(missing_ok=True)  # incomplete until the new meta lands
    atomic.write_bytes(out / DATA, _npz_bytes(col.arrays()))
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
