"""Continuous batching for the MLX backend: up to ``max_batch`` requests decode in one step.

Each request is prefilled on its own, exactly as alone (its own caches, chunk by chunk), and *joins* a slot of the
batch. A slot's cache on the global layers is allocated at start-up for ``max_context`` positions (the prompt's
keys and values are copied in when a request joins); on the local (sliding-window) layers a row keeps the rotating
cache of ``sliding_window`` entries its prefill filled, so its window is the one it has alone.

One step (:meth:`MLXBatch.step`) is one lazy graph: the projections, MLP and norms of every block run on all B rows
at once; each row's attention runs on its own caches at its own position (RoPE offset, cache write and sliding
window per row, the code of the solo forward: ``Attention.attend``); block N's output is steered per row (a row
without steering is unchanged); one SAE encode + filter + top-k of the B residuals; logit processing and sampling
per row with the row's own PRNG key (the solo step's :func:`backends.mlx_backend.draw`), so a row's seeded sample
never depends on its neighbours. The B records are packed into one (B, width) array, queued with one
``mx.async_eval`` and copied to the host once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import KVCache

from backends.mlx_gemma2 import _softcap


@dataclass
class Row:
    key: Any  # the core's handle for the request
    state: Any  # the request's backends.mlx_backend._Request (its caches, last token, key, steering, logits)
    slot: int  # which of the preallocated global-layer caches it holds
    tail: int  # logprob entries after its feature record (0 without logprobs)


class MLXBatch:
    """The rows decoding together and the global layers' caches of ``max_batch`` slots, allocated once."""

    def __init__(self, model, sae, max_batch: int, max_context: int, stream):
        if max_batch < 1 or max_context < 1:
            raise ValueError("max_batch and max_context must be >= 1")
        self.model, self.sae, self.stream = model, sae, stream
        self.max_batch, self.max_context = max_batch, max_context
        layers = model.model.layers
        self.global_layers = [i for i, layer in enumerate(layers) if not layer.sliding]
        attn = layers[0].self_attn
        with mx.stream(stream):
            probe = model.make_cache()  # the dtype the model writes its keys in (quantized models included)
            model(mx.array([[0]], dtype=mx.int32), probe)
            dtype = probe[0].keys.dtype
            shape = (1, attn.n_kv_heads, max_context, attn.head_dim)
            self.slots: list[list[KVCache]] = []
            for _ in range(max_batch):
                caches = []
                for _ in self.global_layers:
                    c = KVCache()
                    c.keys, c.values = mx.zeros(shape, dtype), mx.zeros(shape, dtype)
                    caches.append(c)
                self.slots.append(caches)
            mx.eval([[(c.keys, c.values) for c in caches] for caches in self.slots])
        window = model.args.sliding_window
        per_position = 2 * attn.n_kv_heads * attn.head_dim * dtype.size
        local = (len(layers) - len(self.global_layers)) * min(window or 0, max_context)
        self.bytes = max_batch * per_position * (len(self.global_layers) * max_context + local)
        self.rows: list[Row] = []

    @property
    def free(self) -> int:
        return self.max_batch - len(self.rows)

    def join(self, key: Any, state, n: int, params) -> None:
        """A prefilled request (``n`` prompt tokens) becomes a row: its global layers' keys and values move into
        a free slot."""
        if len(self.rows) >= self.max_batch:
            raise RuntimeError("the batch is full")
        if n + params.max_tokens > self.max_context:
            raise ValueError(f"{n} prompt tokens + max_tokens {params.max_tokens} exceed the context "
                             f"{self.max_context}")
        used = {r.slot for r in self.rows}
        slot = next(i for i in range(self.max_batch) if i not in used)
        with mx.stream(self.stream):
            for dst, i in zip(self.slots[slot], self.global_layers):
                src = state.cache[i]
                off = src.offset
                dst.keys[..., :off, :] = src.keys[..., :off, :]
                dst.values[..., :off, :] = src.values[..., :off, :]
                dst.offset = off
                state.cache[i] = dst
            mx.eval([(dst.keys, dst.values) for dst in self.slots[slot]])
        n_lp = params.logprobs
        tail = 0 if n_lp is None else (1 if n_lp == 0 else 1 + 2 * n_lp)
        self.rows.append(Row(key, state, slot, tail))

    def leave(self, key: Any) -> None:
        """Drop ``key``'s row at once (its slot is free for the next request)."""
        self.rows = [r for r in self.rows if r.key is not key]

    def clear(self) -> None:
        self.rows.clear()

    def step(self, layer: int, capture: bool, draw, solo) -> tuple[Any, list[Row]]:
        """Queue one step of every row: the (B, width) record and the rows it belongs to, in order. ``draw(state,
        logits)`` is the solo step's per-request logit processing and sampling; ``solo(state)`` the solo step
        itself, which a single row runs (fewer ops than a batch of one)."""
        rows = list(self.rows)
        if not rows:
            raise RuntimeError("no rows to step")
        if len(rows) == 1:
            return solo(rows[0].state)[None], rows
        states = [r.state for r in rows]
        counts = []
        with mx.stream(self.stream):
            tokens = mx.concatenate([s.token for s in states])[:, None]  # (B, 1)
            logits, hidden = forward(self.model, tokens, states, layer if capture else None)
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
        return record, rows

    def split(self, host: np.ndarray, rows: list[Row], capture: bool) -> list[np.ndarray]:
        """The host copy of a step's record -> each row's own record (the solo layout)."""
        head = 1 + (self.sae.k * 2 + 2 if capture else 0)
        return [host[i, : head + r.tail] for i, r in enumerate(rows)]


def forward(model, tokens, states: list, capture_layer: int | None):
    """Logits (B, 1, vocab) and block ``capture_layer``'s output (B, 1, d) (None when not asked) for one token per
    row, each row attending over its own caches (``states[i].cache``) and steered by its own ``states[i].steer``."""
    inner = model.model
    h = inner.embed_tokens(tokens)
    h = h * mx.array(inner.args.hidden_size**0.5, dtype=h.dtype)  # as GemmaModel.__call__
    captured = None
    steers = [s.steer for s in states]
    for i, block in enumerate(inner.layers):
        attn = block.self_attn
        q, k, v = attn.project(block.input_layernorm(h))
        # one decoded token needs no mask: a row's caches hold exactly the positions it may see (as alone)
        a = mx.concatenate([attn.attend(q[r: r + 1], k[r: r + 1], v[r: r + 1], None, s.cache[i])
                            for r, s in enumerate(states)])
        h = h + block.post_attention_layernorm(attn.o_proj(a))
        h = h + block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(h)))
        if any(st is not None and st.layer == i for st in steers):
            h = mx.concatenate([st(h[r: r + 1]) if st is not None and st.layer == i else h[r: r + 1]
                                for r, st in enumerate(steers)])
        if i == capture_layer:
            captured = h
    return _softcap(inner.embed_tokens.as_linear(inner.norm(h)), model.args.final_logit_softcapping), captured
