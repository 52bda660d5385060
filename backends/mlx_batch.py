"""Continuous batching for the MLX backend: up to ``max_batch`` requests decode in one step.

The batch owns, from start-up, the KV cache of ``max_batch`` rows: per global-attention layer ``max_context``
positions per row, per local (sliding-window) layer a ring of ``sliding_window`` positions per row (position p in
slot p mod window). A request is prefilled on its own, exactly as alone (its own caches, chunk by chunk), and
*joins* by copying its keys and values into the next free row (a local layer's ring slots as they are); a row that
*leaves* is replaced by the last row, so the active rows are rows 0..B-1.

One step (:meth:`MLXBatch.step`) is one lazy graph: every block runs on the B rows at once, each row at its own
position (RoPE offset, cache write, causal mask and window per row; attention reads the first S positions, S a
power of two past the furthest row); block N's output is steered per row (a row without steering is unchanged);
one SAE encode + filter + top-k of the B residuals; logit processing and sampling per row with the row's own PRNG
key (the solo step's :func:`backends.mlx_backend.draw`), so a row's seeded sample never depends on its neighbours.
The B records are packed into one (B, width) array, queued with one ``mx.async_eval`` and copied to the host once.
Nothing reduces across rows, so a row's tokens and features are the ones it gets alone (up to float rounding of
the wider matmuls and of attention over masked positions).

A step of one row (a lone request) is the solo step (:meth:`backends.mlx_backend.MLXBackend._step`) with caches
that read and write that row's storage in place (:class:`RowCache`): the same graph as alone, nothing padded, no
mask, no copy, so a lone request is as fast under ``--max-batch 8`` as under ``--max-batch 1``. The row's keys stay
where the batched step reads them, so a request joining next to it (or the batch shrinking back to one row) needs
no hand-over.

A request that will join is prefilled with :class:`WindowCache` on its local layers (not mlx-lm's rotating cache):
it keeps the batch's ring layout from the start, so joining copies the slots as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from backends.mlx_gemma2 import _softcap


class WindowCache:
    """A local (sliding-window) layer's cache for a request that will join the batch, in the batch's ring layout:
    ``size`` slots, position p in slot p mod size. For a chunk of several tokens ``update_and_fetch`` returns what
    mlx-lm's ``RotatingKVCache`` returns — the last ``size - 1`` earlier positions in temporal order, then the
    chunk — so the prefill computes exactly what it computes alone (the model's window mask assumes that order);
    for one token it returns the filled slots (the whole ring once it has wrapped: every slot is in the window and
    no mask is needed)."""

    def __init__(self, size: int):
        self.size, self.offset = size, 0
        self.keys = self.values = None

    @property
    def state(self):
        return self.keys, self.values

    def update_and_fetch(self, keys, values):
        S, prev = keys.shape[2], self.offset
        if self.keys is None:
            self.keys = mx.zeros((*keys.shape[:2], self.size, keys.shape[3]), keys.dtype)
            self.values = mx.zeros((*values.shape[:2], self.size, values.shape[3]), values.dtype)
        if S > 1:  # read the earlier positions before the chunk overwrites their slots
            before = min(prev, self.size - 1)
            out = (mx.concatenate([_recent(self.keys, prev, before), keys], axis=2),
                   mx.concatenate([_recent(self.values, prev, before), values], axis=2))
        m = min(S, self.size)  # the chunk's last m positions stay
        for buf, new in ((self.keys, keys), (self.values, values)):
            _put(buf, new[..., S - m:, :], prev + S - m)
        self.offset += S
        if S > 1:
            return out
        n = min(self.offset, self.size)
        return self.keys[..., :n, :], self.values[..., :n, :]


def joining_cache(model) -> list:
    """The caches of a request that will join: mlx-lm's ``KVCache`` on the global layers, :class:`WindowCache` on
    the local ones."""
    window = model.args.sliding_window
    return [WindowCache(window) if layer.sliding else c for layer, c in zip(model.layers, model.make_cache())]


def _recent(ring, end: int, m: int):
    """Positions end-m .. end-1 of a ring (position p in slot p mod size), in temporal order."""
    size = ring.shape[2]
    start = (end - m) % size
    if start + m <= size:
        return ring[..., start: start + m, :]
    return mx.concatenate([ring[..., start:, :], ring[..., : start + m - size, :]], axis=2)


def _put(ring, new, first: int) -> None:
    """Write ``new``'s positions first, first+1, ... (at most the ring's size) into their slots, in place."""
    size, m = ring.shape[2], new.shape[2]
    start = first % size
    head = min(m, size - start)
    ring[..., start: start + head, :] = new[..., :head, :]
    if head < m:
        ring[..., : m - head, :] = new[..., head:, :]


class RowCache:
    """Row ``b`` of the batch's cache on one layer as an mlx-lm cache for one token at ``offset`` (the solo
    forward's interface): the token's keys and values are written into the row's storage in place and the row's
    filled positions are returned (a local layer: the ring's filled slots, all of them once it has wrapped)."""

    def __init__(self, keys: list, values: list, layer: int, b: int, offset: int, slots: int | None):
        self.keys, self.values = keys, values  # the batch's per-layer arrays (the lists, not the batch: no cycle)
        self.layer, self.b, self.offset, self.slots = layer, b, offset, slots

    def update_and_fetch(self, keys, values):
        i, b, p = self.layer, self.b, self.offset
        at = p % self.slots if self.slots else p
        n = min(p + 1, self.slots) if self.slots else p + 1
        out = []
        for arrs, new in ((self.keys, keys), (self.values, values)):
            arrs[i][b: b + 1, :, at: at + 1, :] = new
            out.append(arrs[i][b: b + 1, :, :n, :])
        return tuple(out)


@dataclass
class Row:
    key: Any  # the core's handle for the request
    state: Any  # the request's backends.mlx_backend._Request (last token, key, steering, logits)
    position: int  # where its next input token goes
    tail: int  # logprob entries after its feature record (0 without logprobs)


class MLXBatch:
    """The rows decoding together and their KV caches, allocated once: per global layer (max_batch, kv heads,
    max_context, head_dim), per local layer a ring of ``sliding_window`` positions per row (position p in slot
    p mod window). Rows 0..B-1 are the active ones (a row that leaves is replaced by the last one)."""

    def __init__(self, model, sae, max_batch: int, max_context: int, stream):
        if max_batch < 1 or max_context < 1:
            raise ValueError("max_batch and max_context must be >= 1")
        self.model, self.sae, self.stream = model, sae, stream
        self.max_batch, self.max_context = max_batch, max_context
        self.layers = model.model.layers
        attn = self.layers[0].self_attn
        window = model.args.sliding_window
        self.ring = min(window or max_context, max_context)  # a local layer's slots per row
        with mx.stream(stream):
            probe = model.make_cache()  # the dtype the model writes its keys in (quantized models included)
            model(mx.array([[0]], dtype=mx.int32), probe)
            dtype = probe[0].keys.dtype
            self.keys, self.values = [], []
            for layer in self.layers:
                shape = (max_batch, attn.n_kv_heads, self.ring if layer.sliding else max_context, attn.head_dim)
                self.keys.append(mx.zeros(shape, dtype))
                self.values.append(mx.zeros(shape, dtype))
            mx.eval(self.keys, self.values)
        self.bytes = sum(a.nbytes for a in (*self.keys, *self.values))
        self.rows: list[Row] = []
        self._lone = [RowCache(self.keys, self.values, i, 0, 0, self.ring if layer.sliding else None)
                      for i, layer in enumerate(self.layers)]  # a lone row's caches

    @property
    def free(self) -> int:
        return self.max_batch - len(self.rows)

    def join(self, key: Any, state, n: int, params) -> None:
        """Row B <- a prefilled request (``n`` prompt tokens): its caches' keys and values (a local layer's last
        ``window`` positions, each in its ring slot)."""
        if len(self.rows) >= self.max_batch:
            raise RuntimeError("the batch is full")
        if n + params.max_tokens > self.max_context:
            raise ValueError(f"{n} prompt tokens + max_tokens {params.max_tokens} exceed the context "
                             f"{self.max_context}")
        b = len(self.rows)
        with mx.stream(self.stream):
            for i, layer in enumerate(self.layers):
                src = state.cache[i]
                if layer.sliding and not isinstance(src, WindowCache):
                    raise ValueError("a request joins the batch after prefill_steps(..., joining=True)")
                m = min(n, self.ring) if layer.sliding else n  # a ring's slots already hold position p at p mod ring
                self.keys[i][b: b + 1, :, :m, :] = src.keys[..., :m, :]
                self.values[i][b: b + 1, :, :m, :] = src.values[..., :m, :]
            mx.eval(self.keys, self.values)
        n_lp = params.logprobs
        tail = 0 if n_lp is None else (1 if n_lp == 0 else 1 + 2 * n_lp)
        self.rows.append(Row(key, state, n, tail))

    def leave(self, key: Any) -> None:
        """Drop ``key``'s row at once; the last row moves into its place."""
        i = next((j for j, r in enumerate(self.rows) if r.key is key), None)
        if i is None:
            return
        last = len(self.rows) - 1
        if i != last:
            with mx.stream(self.stream):
                for arrs in (self.keys, self.values):
                    for a in arrs:
                        a[i: i + 1] = a[last: last + 1]
            self.rows[i] = self.rows[last]
        self.rows.pop()

    def clear(self) -> None:
        self.rows.clear()

    def step(self, layer: int, capture: bool, draw, solo) -> tuple[Any, list[Row]]:
        """Queue one step of every row: the (B, width) record — a lone row's is the solo step's (width,) record —
        and the rows it belongs to, in order. ``draw(state, logits)`` is the solo step's per-request logit
        processing and sampling; ``solo(state, cache)`` the solo step of one request over ``cache``."""
        rows = list(self.rows)
        if not rows:
            raise RuntimeError("no rows to step")
        if len(rows) == 1:  # a lone request: the solo step on its row's storage
            row = rows[0]
            record = solo(row.state, self.row_caches(row.position))
            row.position += 1
            return record, rows
        states = [r.state for r in rows]
        counts = []
        with mx.stream(self.stream):
            tokens = mx.concatenate([s.token for s in states])[:, None]  # (B, 1)
            logits, hidden = self.forward(tokens, [r.position for r in rows], [s.steer for s in states],
                                          layer if capture else None)
            toks, tails = [], []
            for i, s in enumerate(states):
                tails.append(draw(s, logits[i: i + 1, -1, :]))
                toks.append(s.token)
                if s.logits is not None and s.logits.counts is not None:
                    counts.append(s.logits.counts)
            parts = [mx.concatenate(toks).astype(mx.float32)[:, None]]
            if capture:
                parts.append(self.sae.topk(hidden[:, -1, :]))  # one encode + filter + top-k for every row
            width = max(r.tail for r in rows)
            if width:
                parts.append(mx.stack([mx.pad(t, (0, width - t.shape[0])) if t is not None else mx.zeros((width,))
                                       for t in tails]))
            record = parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=1)
        mx.async_eval(record, *counts)
        for r in rows:
            r.position += 1
        return record, rows

    def row_caches(self, position: int) -> list[RowCache]:
        """Row 0's caches for one token at ``position`` (the solo forward's interface), made once."""
        for c in self._lone:
            c.offset = position
        return self._lone

    def forward(self, tokens, positions: list[int], steers: list, capture_layer: int | None):
        """Logits (B, 1, vocab) and block ``capture_layer``'s output (B, 1, d) (None when not asked) for one token
        per row at ``positions``: RoPE, cache write and mask per row, each row steered by its own ``steers[i]``."""
        B, R = len(positions), self.max_batch
        inner = self.model.model
        h = inner.embed_tokens(tokens)
        h = h * mx.array(inner.args.hidden_size**0.5, dtype=h.dtype)  # as GemmaModel.__call__
        pos = mx.array(positions, dtype=mx.int32)
        where = mx.array(positions + [0] * (R - B), dtype=mx.int32).reshape(R, 1, 1, 1)  # free rows: slot 0
        size = min(self.max_context, 1 << max(positions).bit_length())  # keys read: a power of two past the furthest
        seen = mx.arange(size)[None, :] <= pos[:, None]  # (B, S): causal, per row
        slots = mx.arange(self.ring)[None, :]
        in_window = slots <= pos[:, None]  # the ring's filled slots (all of them once it has wrapped)
        captured = None
        for i, block in enumerate(inner.layers):
            attn = block.self_attn
            q, k, v = attn.project(block.input_layernorm(h))
            q, k = attn.rope(q, offset=pos), attn.rope(k, offset=pos)
            at = where % self.ring if block.sliding else where
            for arrs, new in ((self.keys, k), (self.values, v)):
                if B < R:
                    new = mx.concatenate([new, mx.zeros((R - B, *new.shape[1:]), new.dtype)])
                arrs[i] = mx.put_along_axis(arrs[i], mx.broadcast_to(at, new.shape), new, axis=2)
            n = self.ring if block.sliding else size
            mask = (in_window if block.sliding else seen)[:, None, None, :]
            if attn.repeats > 1:
                mask = mask[:, None]
            a = attn.attention(q, self.keys[i][:B, :, :n], self.values[i][:B, :, :n], mask)
            h = h + block.post_attention_layernorm(attn.o_proj(a))
            h = h + block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(h)))
            if any(st is not None and st.layer == i for st in steers):
                h = mx.concatenate([st(h[r: r + 1]) if st is not None and st.layer == i else h[r: r + 1]
                                    for r, st in enumerate(steers)])
            if i == capture_layer:
                captured = h
        logits = _softcap(inner.embed_tokens.as_linear(inner.norm(h)), self.model.args.final_logit_softcapping)
        return logits, captured

    def split(self, host: np.ndarray, rows: list[Row], capture: bool) -> list[np.ndarray]:
        """The host copy of a step's record -> each row's own record (the solo layout)."""
        head = 1 + (self.sae.k * 2 + 2 if capture else 0)
        if host.ndim == 1:  # a lone row's solo record
            return [host]
        return [host[i, : head + r.tail] for i, r in enumerate(rows)]
