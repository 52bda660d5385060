"""Continuous batching for the torch backend's eager engine: up to ``max_batch`` requests decode in one step.

The batch owns, from start-up, one KV cache of ``max_batch`` rows x ``max_context`` positions and one set of
per-row step inputs (:class:`BatchInputs`, the rows of :class:`backends.torch_step.StepInputs`). A request is
prefilled on its own (a private cache of its prompt's length, chunk by chunk) and *joins* by copying that cache
and its inputs into the next free row; a row that *leaves* is replaced by the last row (a copy), so the active
rows are always rows ``0..B-1`` and a step runs on views of the first B rows, with no gather.

One step (:func:`batch_step`): the forward of B tokens, each at its own position (RoPE, cache write and masks per
row), block N's output steered per row (a row without steering has zero slots: exactly unchanged), one SAE encode
of the B residuals, filter + top-k per row, logit processing and sampling per row (Philox keyed by each row's
seed and position), packed into one (B, width) record copied to the host once. Nothing reduces across rows, so a
row's tokens and features are the ones it gets alone (up to float rounding of the wider matmuls). Attention reads
the first S keys, S the power-of-two bucket of the furthest row's position (never the whole ``max_context``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from backends.torch_gemma2 import Gemma2, KVCache, _softcap, cache_size
from backends.torch_sae import TorchSAE
from backends.torch_sampling import MAX_LOGPROBS, logprob_tails, process, sample
from backends.torch_step import Skips, StepInputs, decode_step
from neuroscope.core.protocol import MAX_STEER_FEATURES


@dataclass
class BatchInputs:
    """:class:`StepInputs` for ``max_batch`` rows: each field with a leading row dimension."""

    token: torch.Tensor  # (R,) int64
    position: torch.Tensor  # (R,) int64
    temperature: torch.Tensor  # (R,)
    top_p: torch.Tensor  # (R,)
    seed: torch.Tensor  # (R,) int64
    bias: torch.Tensor  # (R, vocab)
    counts: torch.Tensor  # (R, vocab)
    presence: torch.Tensor  # (R,)
    frequency: torch.Tensor  # (R,)
    steer_W_enc: torch.Tensor  # (R, d_model, M)
    steer_b_enc: torch.Tensor  # (R, M)
    steer_threshold: torch.Tensor  # (R, M)
    steer_ids: torch.Tensor  # (R, M) int64
    steer_W_dec: torch.Tensor  # (R, M, d_model)
    steer_values: torch.Tensor  # (R, M)
    steer_clamp: torch.Tensor  # (R, M)

    @classmethod
    def allocate(cls, sae: TorchSAE, vocab: int, rows: int) -> "BatchInputs":
        one = StepInputs.allocate(sae, vocab)  # a free row holds these (top_p 1: a valid nucleus) until one joins
        return cls(**{f.name: getattr(one, f.name).reshape(_row_shape(getattr(one, f.name)))
                      .expand(rows, *_row_shape(getattr(one, f.name))).clone() for f in fields(cls)})

    def put(self, row: int, inp: StepInputs) -> None:
        """Row ``row`` <- one request's inputs (after its prefill: its first token, position and counts)."""
        for f in fields(self):
            dst = getattr(self, f.name)[row]
            dst.copy_(getattr(inp, f.name).reshape(dst.shape))

    def row(self, i: int) -> StepInputs:
        """Row ``i`` as a :class:`StepInputs` of views (the solo step's in-place updates land in the row)."""
        return StepInputs(**{f.name: getattr(self, f.name)[i: i + 1] if f.name in ("token", "position")
                             else getattr(self, f.name)[i] for f in fields(self)})

    def move(self, src: int, dst: int) -> None:
        for f in fields(self):
            t = getattr(self, f.name)
            t[dst].copy_(t[src])


def _row_shape(t: torch.Tensor) -> tuple[int, ...]:
    """A StepInputs field's shape per row: the (1,) token and position become scalars."""
    return () if t.dim() <= 1 and t.numel() == 1 else tuple(t.shape)


class _RowCache:
    """Row 0 of the batch's cache as a one-row :class:`KVCache` of ``size`` positions (views, no copy)."""

    def __init__(self, cache: KVCache, size: int):
        self.keys = [k[:1] for k in cache.keys]
        self.values = [v[:1] for v in cache.values]
        self.size = size
        self.key_positions = cache.key_positions


@dataclass
class Row:
    key: Any  # the core's handle for the request
    position: int  # where its next input token goes (host copy of inputs.position)
    logprobs: int | None  # n, or None
    steered: bool
    processes: bool  # logit bias or penalties
    samples: bool  # temperature > 0


class TorchBatch:
    """The rows decoding together and their device buffers, allocated once."""

    def __init__(self, model: Gemma2, sae: TorchSAE, max_batch: int, max_context: int, compiled=None):
        """``compiled``: the compiled engine's :class:`backends.torch_compiled.CompiledStep`, whose
        :meth:`~backends.torch_compiled.CompiledStep.batch` runs the step compiled, one graph per (batch bucket,
        KV-length bucket); None: eager."""
        if max_batch < 1 or max_context < 1:
            raise ValueError("max_batch and max_context must be >= 1")
        self.model, self.sae = model, sae
        self.max_batch, self.max_context = max_batch, max_context
        device = model.model.embed_tokens.weight.device
        with torch.inference_mode():
            self.cache = KVCache(model.cfg, max_context, model.dtype, device, batch=max_batch)
            self.inputs = BatchInputs.allocate(sae, model.cfg.vocab_size, max_batch)
        self.rows: list[Row] = []
        self._lone = self.inputs.row(0), {}  # a lone row's step inputs and caches (views of row 0, made once)
        self.compiled = compiled
        if compiled is not None:
            compiled.adopt_batch(self)

    @property
    def bytes(self) -> int:
        """Device memory of the KV cache (what ``max_batch`` x ``max_context`` costs)."""
        return sum(t.numel() * t.element_size() for t in (*self.cache.keys, *self.cache.values))

    @property
    def free(self) -> int:
        return self.max_batch - len(self.rows)

    @torch.inference_mode()
    def join(self, key: Any, cache: KVCache, inputs: StepInputs, n: int, params) -> None:
        """Row B <- a prefilled request: its cache's first ``n`` positions and its step inputs."""
        if len(self.rows) >= self.max_batch:
            raise RuntimeError("the batch is full")
        b = len(self.rows)
        if n + params.max_tokens > self.max_context:
            raise ValueError(f"{n} prompt tokens + max_tokens {params.max_tokens} exceed the context "
                             f"{self.max_context}")
        for dst, src in zip((*self.cache.keys, *self.cache.values), (*cache.keys, *cache.values)):
            dst[b, :, :n].copy_(src[0, :, :n])
        self.inputs.put(b, inputs)
        self.rows.append(Row(key, n, params.logprobs, params.steering is not None,
                             bool(params.logit_bias) or params.penalized, params.temperature > 0.0))

    @torch.inference_mode()
    def leave(self, key: Any) -> None:
        """Drop ``key``'s row at once; the last row moves into its place."""
        i = next((j for j, r in enumerate(self.rows) if r.key is key), None)
        if i is None:
            return
        last = len(self.rows) - 1
        if i != last:
            r = self.rows[last]
            end = min(self.max_context, r.position + 1)
            for t in (*self.cache.keys, *self.cache.values):
                t[i, :, :end].copy_(t[last, :, :end])
            self.inputs.move(last, i)
            self.rows[i] = r
        self.rows.pop()

    def clear(self) -> None:
        self.rows.clear()

    @torch.inference_mode()
    def step(self, layer: int, capture: bool) -> tuple[torch.Tensor, list[Row]]:
        """Queue one step of every row: the (B, width) record and the rows it belongs to, in order."""
        rows = list(self.rows)
        if not rows:
            raise RuntimeError("no rows to step")
        furthest = max(r.position for r in rows)
        size = min(self.max_context, cache_size(furthest + 1))
        logprobs = any(r.logprobs is not None for r in rows)
        if self.compiled is not None:
            record = self.compiled.batch(self, len(rows), size, layer, capture, logprobs)[: len(rows)]
        elif len(rows) == 1:  # one row: the solo step on views of row 0 (fewer, cheaper ops than a batch of one)
            r = rows[0]
            skips = Skips(steering=not r.steered, logits=not r.processes, sampling=not r.samples)
            inputs, caches = self._lone
            cache = caches.get(size) or caches.setdefault(size, _RowCache(self.cache, size))
            record = decode_step(self.model, self.sae, inputs, cache, layer, capture, logprobs, skips)[None]
        else:
            record = batch_step(self.model, self.sae, self.inputs, self.cache, len(rows), size, layer, capture,
                                logprobs, steering=any(r.steered for r in rows),
                                processing=any(r.processes for r in rows), sampling=any(r.samples for r in rows))
        for r in rows:
            r.position += 1
        return record, rows

    def split(self, host: np.ndarray, rows: list[Row], capture: bool) -> list[np.ndarray]:
        """The host copy of a step's record -> each row's own record (its logprob tail cut to its n)."""
        head = 1 + (self.sae.k * 2 + 2 if capture else 0)
        out = []
        for i, r in enumerate(rows):
            rec = host[i]
            if r.logprobs is None:
                out.append(rec[:head])
            else:
                n = min(r.logprobs, MAX_LOGPROBS)
                tail = rec[head:]
                out.append(np.concatenate([rec[:head], tail[: 1 + n], tail[1 + MAX_LOGPROBS: 1 + MAX_LOGPROBS + n]]))
        return out


def _block_step(block, x, cos, sin, mask, keys, values, pos) -> torch.Tensor:
    """One block (of either family: its attention's ``qkv`` holds what differs) for B rows of one token each, at
    per-row positions ``pos`` (B,); ``cos``/``sin`` (B, 1, 1, head_dim) and ``mask`` (B, S) are the block's kind's."""
    attn = block.self_attn
    h_in = block.input_layernorm(x)
    B = x.shape[0]
    q, k, v = attn.qkv(h_in, cos, sin)
    where = pos.view(B, 1, 1, 1).expand(B, attn.n_kv, 1, attn.head_dim)
    keys.scatter_(2, where, k)
    values.scatter_(2, where, v)
    S = mask.shape[-1]
    ks, vs = keys[:, :, :S], values[:, :, :S]
    rep = attn.n_heads // attn.n_kv
    q = q.reshape(B, attn.n_kv, rep, attn.head_dim)
    scores = _softcap(torch.matmul(q, ks.transpose(2, 3)) * attn.scale, attn.softcap)
    scores = scores.masked_fill(~mask.view(B, 1, 1, S), torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs, vs).view(B, attn.n_heads, 1, attn.head_dim)
    a = attn.o_proj(out.transpose(1, 2).reshape(B, 1, -1))
    h = x + block.post_attention_layernorm(a)
    return h + block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(h)))


def _steer_rows(sae: TorchSAE, inp: BatchInputs, B: int, h: torch.Tensor) -> torch.Tensor:
    """Each row's steering slots applied to its residual (B, 1, d): ``h + (values - clamp * a) @ W_dec``, ``a``
    the slots' activations of the unsteered row (a TopK SAE's from the full encode of the B rows)."""
    x = h[:, 0].float()
    if sae.architecture == "topk":
        a = sae.encode(x).gather(1, inp.steer_ids[:B])
    else:
        W = inp.steer_W_enc[:B]
        pre = (torch.bmm(sae.prepare(x).to(W.dtype)[:, None], W)[:, 0]).float() + inp.steer_b_enc[:B]
        a = torch.relu(pre) * (pre > inp.steer_threshold[:B])
    coef = torch.addcmul(inp.steer_values[:B], inp.steer_clamp[:B], a, value=-1.0)
    return (x + torch.bmm(coef[:, None], inp.steer_W_dec[:B])[:, 0]).to(h.dtype)[:, None]


def batch_step(model: Gemma2, sae: TorchSAE, inp: BatchInputs, cache: KVCache, B: int, S: int, layer: int,
               capture: bool, logprobs: bool, *, steering: bool, processing: bool, sampling: bool) -> torch.Tensor:
    """One token for each of rows 0..B-1: the (B, width) record, each row ``[token, l0, filtered, k ids, k values]``
    (``[token]`` without capture) plus the ``MAX_LOGPROBS`` tail with ``logprobs``. ``steering`` /
    ``processing`` / ``sampling`` off skip ops that are identities for every row (as the solo eager step does)."""
    tok, pos = inp.token[:B], inp.position[:B]
    h = model.embed(tok)[:, None]  # (B, 1, d)
    ropes = [(c[:, None, None], s[:, None, None]) for c, s in model.rope(pos, h.dtype)]  # (B, 1, 1, hd) per kind
    masks = model.masks(pos, cache.key_positions[:S])  # (B, S) per kind
    captured = None
    for i, block in enumerate(model.layers):
        h = _block_step(block, h, *ropes[block.sliding], masks[block.sliding], cache.keys[i][:B], cache.values[i][:B],
                        pos)
        if steering and i == layer:
            h = _steer_rows(sae, inp, B, h)
        if capture and i == layer:
            captured = h[:, 0]
    logits = model.logits(h[:, -1])  # (B, vocab)
    if processing:
        logits = process(logits, inp.bias[:B], inp.counts[:B], inp.presence[:B, None], inp.frequency[:B, None])
    else:
        logits = logits.float()
    token = sample(logits, inp.temperature[:B], inp.top_p[:B], inp.seed[:B], pos + 1) if sampling \
        else logits.argmax(dim=-1)
    if processing:
        inp.counts[:B].scatter_add_(1, token[:, None], torch.ones(B, 1, dtype=torch.float32, device=token.device))
    inp.token[:B].copy_(token)
    inp.position[:B].add_(1)
    parts = [token.float()[:, None]]
    if capture:
        parts.append(sae.pack_fixed(sae.encode(captured)))
    if logprobs:
        parts.append(logprob_tails(logits, token))
    return torch.cat(parts, dim=1)


__all__ = ["MAX_STEER_FEATURES", "BatchInputs", "TorchBatch", "batch_step"]
