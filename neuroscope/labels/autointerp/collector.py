"""Phase 1's fold: the bounded per-feature top windows and the random pool, one sample's records at a time.

See :mod:`neuroscope.labels.autointerp.examples` for what is kept and why; this module is the arithmetic and the
checkpoint arrays (written as one ``.npz``, from which a killed run resumes to byte-identical arrays).
"""

from __future__ import annotations

import hashlib
import heapq
import io
from pathlib import Path

import numpy as np

from neuroscope.core.protocol import CorpusBatch, CorpusResult

BEFORE, AFTER = 23, 8  # a window: the peak token with up to 23 tokens before it and 8 after
WINDOW = BEFORE + 1 + AFTER  # 32 tokens
# the density histogram of each feature's nonzero activations: 8 log-spaced bins per decade from 1e-3 to 1e4
# (an activation outside falls in the first or last bin)
HIST_EDGES = np.geomspace(1e-3, 1e4, 57)


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
        self.hist = np.zeros((d_sae, len(HIST_EDGES) - 1), dtype=np.int64)
        self.filled = np.zeros(d_sae, dtype=np.int32)
        self.value = np.zeros((d_sae, n), dtype=np.float32)
        self.sample = np.zeros((d_sae, n), dtype=np.int64)
        self.start = np.zeros((d_sae, n), dtype=np.int32)
        self.peak = np.zeros((d_sae, n), dtype=np.int32)
        self.length = np.zeros((d_sae, n), dtype=np.int32)
        self.win_tokens = np.zeros((d_sae, n, w), dtype=np.int32)
        self.win_acts = np.zeros((d_sae, n, w), dtype=np.float32)
        self.floor = np.full(d_sae, -np.inf, dtype=np.float64)
        # the activation-range sample: per feature a uniform sample of the positions where it fired (the ``n``
        # smallest hash keys), each with its window, from which windows across the quantiles are drawn
        self.q_filled = np.zeros(d_sae, dtype=np.int32)
        self.q_key = np.zeros((d_sae, n), dtype=np.int64)
        self.q_value = np.zeros((d_sae, n), dtype=np.float32)
        self.q_sample = np.zeros((d_sae, n), dtype=np.int64)
        self.q_start = np.zeros((d_sae, n), dtype=np.int32)
        self.q_peak = np.zeros((d_sae, n), dtype=np.int32)
        self.q_length = np.zeros((d_sae, n), dtype=np.int32)
        self.q_tokens = np.zeros((d_sae, n, w), dtype=np.int32)
        self.q_acts = np.zeros((d_sae, n, w), dtype=np.float32)
        self.q_ceiling = np.full(d_sae, np.iinfo(np.int64).max, dtype=np.int64)
        self.pool: list[tuple] = []

    records = True  # the corpus-pass driver hands over every position's top-k record

    def add_batch(self, start: int, ids: list[list[int]], batch: CorpusBatch, result: CorpusResult) -> None:
        """The corpus-pass driver's fold (:mod:`neuroscope.calibration.driver`): each sample of one batch."""
        for b, (sample_ids, rec) in enumerate(zip(ids, result.records)):
            self.add(start + b, sample_ids, np.asarray(rec), batch.counted[b, : len(sample_ids)])

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
            bins = np.clip(np.searchsorted(HIST_EDGES, val, side="right") - 1, 0, len(HIST_EDGES) - 2)
            np.add.at(self.hist, (fid, bins), 1)
        order = np.lexsort((pos, -val, fid))  # by feature, strongest first, earliest first
        fid, pos, val = fid[order], pos[order], val[order]
        toks = np.asarray(tokens, dtype=np.int32)
        self._pool(index, toks, fid, pos)
        if not fid.size:
            return
        first = np.flatnonzero(np.r_[True, fid[1:] != fid[:-1]])
        self._sample_range(index, n, toks, fid, pos, val)
        beats = val[first].astype(np.float64) > self.floor[fid[first]]
        cf, cpeak, cval = fid[first][beats], pos[first][beats], val[first][beats]
        m = cf.size
        if not m:
            return
        start, end, acts, wtoks = self._windows(n, toks, fid, pos, val, cf, cpeak)
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

    def _windows(self, n, toks, fid, pos, val, cf, cpeak):
        """The windows around ``cpeak`` of features ``cf`` (one each) in this sample: start, end, the feature's
        activation at each window token, the window's token ids."""
        m = cf.size
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
        return start, end, acts, wtoks

    def _sample_range(self, index, n, toks, fid, pos, val) -> None:
        """The activation-range sample: each (sample, position, feature) where a feature fired gets a hash key;
        per feature this sample offers its smallest-key position, which enters the feature's ``per_feature``
        slots when its key is below the largest kept (that slot is replaced). The kept positions are a uniform
        sample of where the feature fired (at most one per sample), whatever their activation."""
        if not fid.size:
            return
        key = _keys(index, pos, fid)
        order = np.lexsort((key, fid))
        f, p, v, k = fid[order], pos[order], val[order], key[order]
        first = np.flatnonzero(np.r_[True, f[1:] != f[:-1]])
        f, p, v, k = f[first], p[first], v[first], k[first]
        beats = k < self.q_ceiling[f]
        cf, cpos, cval, ckey = f[beats], p[beats], v[beats], k[beats]
        if not cf.size:
            return
        start, end, acts, wtoks = self._windows(n, toks, fid, pos, val, cf, cpos)
        cap = self.per_feature
        slots = self.q_filled[cf].astype(np.int64)
        full = slots >= cap
        if full.any():
            slots[full] = np.argmax(self.q_key[cf[full]], axis=1)
        self.q_filled[cf] = np.maximum(self.q_filled[cf], slots + 1)
        self.q_key[cf, slots], self.q_value[cf, slots], self.q_sample[cf, slots] = ckey, cval, index
        self.q_start[cf, slots], self.q_peak[cf, slots], self.q_length[cf, slots] = start, cpos - start, end - start
        self.q_tokens[cf, slots], self.q_acts[cf, slots] = wtoks, acts
        now_full = self.q_filled[cf] >= cap
        self.q_ceiling[cf[now_full]] = self.q_key[cf[now_full]].max(axis=1)

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
    _SLOT_ARRAYS = ("fired", "hist", "filled", "value", "sample", "start", "peak", "length", "win_tokens", "win_acts",
                    "q_filled", "q_key", "q_value", "q_sample", "q_start", "q_peak", "q_length", "q_tokens", "q_acts")

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
        q_full = col.q_filled >= per_feature
        col.q_ceiling[q_full] = col.q_key[q_full].max(axis=1)
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

    def _range_arrays(self) -> dict[str, np.ndarray]:
        """The activation-range sample as flat arrays: by feature, strongest first (equal values: earlier
        sample, then earlier start first)."""
        f, s = np.nonzero(np.arange(self.per_feature)[None, :] < self.q_filled[:, None])
        order = np.lexsort((self.q_start[f, s], self.q_sample[f, s], -self.q_value[f, s], f))
        f, s = f[order], s[order]
        lengths = self.q_length[f, s].astype(np.int64)
        keep = np.arange(WINDOW)[None, :] < lengths[:, None]
        return {
            "q_feature": f.astype(np.int32), "q_value": self.q_value[f, s], "q_sample": self.q_sample[f, s],
            "q_start": self.q_start[f, s], "q_peak": self.q_peak[f, s],
            "q_offset": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "q_tokens": self.q_tokens[f, s][keep], "q_acts": self.q_acts[f, s][keep],
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
            **self._range_arrays(), **self._pool_arrays(), "fired": self.fired.copy(), "hist": self.hist.copy(),
            "hist_edges": HIST_EDGES.copy(),
            "counters": np.asarray([self.samples_done, self.tokens, self.truncated], dtype=np.int64),
        }


def _keys(index: int, pos: np.ndarray, fid: np.ndarray) -> np.ndarray:
    """A deterministic 63-bit hash of (sample, position, feature) (splitmix64), so that a resumed run keeps the
    same sample as an uninterrupted one."""
    with np.errstate(over="ignore"):
        x = (np.uint64(index) * np.uint64(0x9E3779B97F4A7C15) + pos.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
             + fid.astype(np.uint64) * np.uint64(0x94D049BB133111EB))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(1)).astype(np.int64)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError):
        return None
