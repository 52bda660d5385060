"""A faithful Gemma-2 for MLX: local (sliding-window) and global attention layers alternate.

mlx-lm's ``models/gemma2.py`` lets every layer attend over the whole context, so once a sequence is longer
than ``sliding_window`` its hidden states drift away from the reference implementation (transformers) and
so would every SAE feature read from them. This module keeps the same parameter names and shapes as mlx-lm's
(so ``mlx_lm.utils.load_model`` loads the same safetensors, quantized ones included) and adds what is
missing: per-layer ``layer_types``, a rotating KV cache of ``sliding_window`` entries on the local layers and
the matching window masks, plus an optional capture of one decoder block's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import BaseModelArgs, create_causal_mask
from mlx_lm.models.cache import KVCache, RotatingKVCache

SLIDING = "sliding_attention"


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    head_dim: int
    rms_norm_eps: float
    vocab_size: int
    num_key_value_heads: int
    rope_theta: float = 10000.0
    rope_traditional: bool = False
    rope_parameters: dict | None = None  # transformers >= 5 writes rope_theta here
    attn_logit_softcapping: float | None = 50.0
    final_logit_softcapping: float | None = 30.0
    query_pre_attn_scalar: float = 144.0
    sliding_window: int | None = 4096
    layer_types: list | None = None
    max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.layer_types is None:  # Gemma-2's fixed pattern: even layers are local
            self.layer_types = [SLIDING if i % 2 == 0 else "full_attention" for i in range(self.num_hidden_layers)]
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        if self.rope_parameters and "rope_theta" in self.rope_parameters:
            self.rope_theta = float(self.rope_parameters["rope_theta"])

    def is_sliding(self, i: int) -> bool:
        return self.sliding_window is not None and self.layer_types[i] == SLIDING


class RMSNorm(nn.Module):
    """Gemma's RMSNorm scales by ``1 + weight`` (the checkpoint stores the offset from one)."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.zeros((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, 1.0 + self.weight, self.eps)


def _softcap(x: mx.array, cap: float | None) -> mx.array:
    return x if not cap else mx.tanh(x / cap) * cap


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dim = args.hidden_size
        self.n_heads, self.n_kv_heads = args.num_attention_heads, args.num_key_value_heads
        self.repeats = self.n_heads // self.n_kv_heads
        self.head_dim = args.head_dim
        self.scale = args.query_pre_attn_scalar**-0.5
        self.softcap = args.attn_logit_softcapping
        self.q_proj = nn.Linear(dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, dim, bias=False)
        self.rope = nn.RoPE(self.head_dim, traditional=args.rope_traditional, base=args.rope_theta)

    def __call__(self, x: mx.array, mask: mx.array | None, cache: Any) -> mx.array:
        return self.o_proj(self.attend(*self.project(x), mask, cache))

    def project(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """``x`` (B, L, d) -> queries (B, heads, L, head_dim), keys and values (B, kv heads, L, head_dim)."""
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        return q, k, v

    def attend(self, q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None, cache: Any) -> mx.array:
        """RoPE at the cache's offset, the cache update and the attention of projected ``q``, ``k``, ``v``:
        (B, L, heads * head_dim), before ``o_proj``."""
        B, _, L, _ = q.shape
        offset = cache.offset if cache is not None else 0
        q, k = self.rope(q, offset=offset), self.rope(k, offset=offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        return self.attention(q, k, v, mask)

    def attention(self, q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None) -> mx.array:
        """Scaled, soft-capped attention of ``q`` (B, heads, L, hd) over ``k``, ``v`` (B, kv heads, S, hd), ``mask``
        (True = attend) broadcast to (B, kv heads, repeats, L, S) with grouped queries, else (B, heads, L, S)."""
        B, _, L, _ = q.shape
        q = q * self.scale
        if self.repeats > 1:  # grouped-query attention without materialising repeated keys
            q = q.reshape(B, self.n_kv_heads, self.repeats, L, self.head_dim)
            k, v = mx.expand_dims(k, 2), mx.expand_dims(v, 2)
        scores = _softcap(q @ k.swapaxes(-1, -2), self.softcap)
        if mask is not None:
            scores = mx.where(mask, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
        out = mx.softmax(scores, axis=-1, precise=True) @ v
        if self.repeats > 1:
            out = out.reshape(B, self.n_heads, L, self.head_dim)
        return out.transpose(0, 2, 1, 3).reshape(B, L, -1)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.gelu_approx(self.gate_proj(x)) * self.up_proj(x))  # gelu_pytorch_tanh


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, sliding: bool):
        super().__init__()
        self.sliding = sliding
        self.self_attn = Attention(args)
        self.mlp = MLP(args.hidden_size, args.intermediate_size)
        eps = args.rms_norm_eps
        self.input_layernorm = RMSNorm(args.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(args.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(args.hidden_size, eps)

    def __call__(self, x: mx.array, mask: mx.array | None, cache: Any) -> mx.array:
        h = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), mask, cache))
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


def _masks(n: int, window: int | None, global_cache: Any, local_cache: Any) -> tuple:
    """Boolean masks (True = attend) for the global and the local layers, built before the caches update.

    A local layer's rotating cache holds at most ``window - 1`` earlier positions once it has wrapped
    (``RotatingKVCache`` keeps that many before appending a multi-token chunk), so its query offset is
    capped there. A single decoded token needs no mask: the rotating cache then holds exactly the
    ``window`` positions it may see, itself included.
    """
    if n == 1:
        return None, None
    g_off = global_cache.offset if global_cache is not None else 0
    global_mask = create_causal_mask(n, g_off)
    if window is None:
        return global_mask, None
    l_off = min(window - 1, local_cache.offset) if local_cache is not None else 0
    return global_mask, create_causal_mask(n, l_off, window_size=window)


class GemmaModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args, args.is_sliding(i)) for i in range(args.num_hidden_layers)]
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def __call__(self, inputs: mx.array, cache=None, capture_layer: int | None = None, steer=None):
        """Final-norm hidden states, and the output of block ``capture_layer`` (None when not asked).
        ``steer`` (feature steering) rewrites block ``steer.layer``'s output before it flows on or is
        captured."""
        h = self.embed_tokens(inputs)
        h = h * mx.array(self.args.hidden_size**0.5, dtype=h.dtype)  # Gemma scales in the activation dtype
        cache = cache if cache is not None else [None] * len(self.layers)
        first_global = next((c for layer, c in zip(self.layers, cache) if not layer.sliding), None)
        first_local = next((c for layer, c in zip(self.layers, cache) if layer.sliding), None)
        window = self.args.sliding_window if any(layer.sliding for layer in self.layers) else None
        global_mask, local_mask = _masks(h.shape[1], window, first_global, first_local)
        captured = None
        for i, (layer, c) in enumerate(zip(self.layers, cache)):
            h = layer(h, local_mask if layer.sliding else global_mask, c)
            if steer is not None and i == steer.layer:
                h = steer(h)
            if i == capture_layer:
                captured = h
        return self.norm(h), captured

    def block_output(self, inputs: mx.array, layer: int) -> mx.array:
        """Prefill only, for the corpus pass: ``inputs`` (B, L), each row from position 0 and right-padded, ->
        block ``layer``'s output (B, L, d), lazily. No cache, and the forward stops there (no later block, no
        norm, no logits); with causal masks a real position never sees the pads after it."""
        h = self.embed_tokens(inputs)
        h = h * mx.array(self.args.hidden_size**0.5, dtype=h.dtype)  # as in __call__
        window = self.args.sliding_window if any(block.sliding for block in self.layers) else None
        global_mask, local_mask = _masks(h.shape[1], window, None, None)
        for block in self.layers[: layer + 1]:
            h = block(h, local_mask if block.sliding else global_mask, None)
        return h


class Model(nn.Module):
    """Drop-in for mlx-lm's Gemma-2 ``Model`` (same weights, same call), plus block capture."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = GemmaModel(args)

    def __call__(self, inputs: mx.array, cache=None, *, capture_layer: int | None = None, last_only=False,
                 steer=None):
        """Logits (soft-capped); with ``capture_layer`` a pair ``(logits, block output)``.

        ``last_only`` projects only the last position onto the vocabulary (prefill needs no more); ``steer``
        rewrites block ``steer.layer``'s output (feature steering).
        """
        h, captured = self.model(inputs, cache, capture_layer, steer)
        if last_only:
            h = h[:, -1:, :]
        logits = _softcap(self.model.embed_tokens.as_linear(h), self.args.final_logit_softcapping)
        return logits if capture_layer is None else (logits, captured)

    def make_cache(self) -> list:
        return [
            RotatingKVCache(max_size=self.args.sliding_window) if layer.sliding else KVCache()
            for layer in self.model.layers
        ]

    def sanitize(self, weights: dict) -> dict:
        # tied embeddings: a stray lm_head (or rotary buffers) in a converted checkpoint is not a parameter
        return {k: v for k, v in weights.items() if not k.startswith("lm_head.") and "rotary_emb" not in k}

    @property
    def layers(self) -> list:
        return self.model.layers


def model_classes(config: dict):
    """``get_model_classes`` for ``mlx_lm.utils.load_model``: this Gemma-2 instead of mlx-lm's."""
    if config.get("model_type") != "gemma2":
        raise ValueError(f"the mlx backend runs Gemma-2 models; this checkpoint is a {config.get('model_type')!r}")
    return Model, ModelArgs
