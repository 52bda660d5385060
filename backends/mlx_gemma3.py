"""Gemma-3 (text) for MLX, built on the faithful Gemma-2 (:mod:`backends.mlx_gemma2`).

Gemma-3 keeps Gemma-2's block, masks and rotating caches; what differs lives here:

- q/k RMSNorms (``(1 + w)`` over the head dimension) before RoPE, inside :meth:`Attention.project`, so every
  caller of ``project`` (the solo step and the batched step alike) gets normed queries and keys;
- the layer pattern: ``layer_types`` when the config has it, else every ``sliding_window_pattern``-th layer global
  (the hub's configs spell only the pattern);
- RoPE per layer type: ``rope_local_base_freq`` on local layers, ``rope_theta`` with an optional linear
  ``rope_scaling`` (positions divided by its factor) on global ones; transformers 5 writes the same as
  ``rope_parameters`` per layer type;
- no soft-capping, ``query_pre_attn_scalar`` independent of the head size;
- multimodal checkpoints (``model_type: gemma3``): the language model's settings come from ``text_config`` (the hub
  spells only the fields that differ from ``Gemma3TextConfig``'s defaults, which are the defaults here) and
  :meth:`Model.sanitize` keeps only the language model's weights.

Parameter names and shapes are mlx-lm's ``gemma3_text`` (and transformers'), so ``mlx_lm.utils.load_model`` loads
the same safetensors, quantized ones included.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import BaseModelArgs

from backends import mlx_gemma2 as g2

SLIDING, FULL = g2.SLIDING, "full_attention"
ROPE_TYPES = ("default", "linear")
# where a multimodal checkpoint keeps the language model: the hub's layout, and transformers 5's in-memory one
_LANGUAGE_MODEL = (("language_model.model.", "model."), ("model.language_model.", "model."))


@dataclass
class ModelArgs(BaseModelArgs):
    """A Gemma-3 text config; the defaults are transformers' ``Gemma3TextConfig``'s (4.50 and 5.x)."""

    model_type: str = "gemma3_text"
    hidden_size: int = 2304
    num_hidden_layers: int = 26
    intermediate_size: int = 9216
    num_attention_heads: int = 8
    head_dim: int = 256
    rms_norm_eps: float = 1e-6
    vocab_size: int = 262_208
    num_key_value_heads: int = 4
    rope_theta: float = 1_000_000.0
    rope_local_base_freq: float = 10_000.0
    rope_scaling: dict | None = None
    rope_parameters: dict | None = None  # transformers >= 5: {"full_attention": {...}, "sliding_attention": {...}}
    rope_traditional: bool = False
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    query_pre_attn_scalar: float = 256.0
    sliding_window: int | None = 4096
    sliding_window_pattern: int = 6
    layer_types: list | None = None
    max_position_embeddings: int = 131_072
    hidden_activation: str = "gelu_pytorch_tanh"
    tie_word_embeddings: bool = True
    use_bidirectional_attention: bool = False

    @classmethod
    def from_dict(cls, params: dict) -> "ModelArgs":
        """A text config as it is, or a multimodal one's ``text_config`` (its ``model_type`` is ``gemma3``)."""
        if params.get("model_type") == "gemma3":
            text = params.get("text_config")
            params = {**(text if isinstance(text, dict) else {}), "model_type": "gemma3_text"}
        return super().from_dict(params)

    def __post_init__(self) -> None:
        if self.layer_types is None:
            p = int(self.sliding_window_pattern)
            self.layer_types = [FULL if (i + 1) % p == 0 else SLIDING for i in range(self.num_hidden_layers)]
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        if unknown := sorted(set(self.layer_types) - {SLIDING, FULL}):
            raise ValueError(f"unsupported Gemma-3 layer types {unknown}; expected {SLIDING!r} or {FULL!r}")
        if self.use_bidirectional_attention:
            raise ValueError("bidirectional (embedding) Gemma-3 models are not supported: Neuroscope generates text")
        if not self.tie_word_embeddings:
            raise ValueError("Gemma-3 with an untied lm_head is not supported (Gemma-3 ties it to the embedding)")
        if self.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise ValueError(f"unsupported Gemma-3 activation {self.hidden_activation!r} (expected gelu_pytorch_tanh)")
        self.rope = {SLIDING: self._rope(SLIDING), FULL: self._rope(FULL)}

    def _rope(self, layer_type: str) -> tuple[float, float]:
        """``(base, scale)`` of nn.RoPE for a layer type, as transformers resolves it: legacy keys first
        (``rope_local_base_freq``; ``rope_theta`` + ``rope_scaling`` for global layers), then ``rope_parameters``."""
        if layer_type == SLIDING:
            params: dict = {"rope_type": "default", "rope_theta": self.rope_local_base_freq}
        else:
            params = {"rope_type": "default", "rope_theta": self.rope_theta, **_legacy(self.rope_scaling)}
        given = self.rope_parameters or {}
        if layer_type in given or FULL in given or SLIDING in given:
            params.update(_legacy(given.get(layer_type)))
        elif layer_type == FULL:  # a flat dict: the global layers' (as legacy rope_scaling was)
            params.update(_legacy(given))
        kind = params.get("rope_type", "default")
        if kind not in ROPE_TYPES:
            raise ValueError(f"unsupported RoPE type {kind!r} on Gemma-3's {layer_type} layers; "
                             f"supported: {', '.join(ROPE_TYPES)}")
        factor = float(params.get("factor", 1.0)) if kind == "linear" else 1.0
        if factor <= 0:
            raise ValueError(f"RoPE factor must be positive, got {factor}")
        return float(params["rope_theta"]), 1.0 / factor

    def is_sliding(self, i: int) -> bool:
        return self.sliding_window is not None and self.layer_types[i] == SLIDING


def _legacy(scaling: dict | None) -> dict:
    """A RoPE dict with the old ``type`` key spelled ``rope_type``."""
    if not scaling:
        return {}
    out = dict(scaling)
    if "type" in out and "rope_type" not in out:
        out["rope_type"] = out.pop("type")
    return out


class Attention(g2.Attention):
    """Gemma-2's attention (GQA, ``query_pre_attn_scalar``, masks) with q/k norms and its layer type's RoPE."""

    def __init__(self, args: ModelArgs, layer_type: str):
        super().__init__(args)
        self.q_norm = g2.RMSNorm(self.head_dim, args.rms_norm_eps)
        self.k_norm = g2.RMSNorm(self.head_dim, args.rms_norm_eps)
        base, scale = args.rope[layer_type]
        self.rope = nn.RoPE(self.head_dim, traditional=args.rope_traditional, base=base, scale=scale)

    def project(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        q, k, v = super().project(x)
        return self.q_norm(q), self.k_norm(k), v


class TransformerBlock(g2.TransformerBlock):
    def __init__(self, args: ModelArgs, i: int):
        super().__init__(args, args.is_sliding(i))
        self.self_attn = Attention(args, args.layer_types[i])


class GemmaModel(g2.GemmaModel):
    """Gemma-2's forward (embedding scale, masks, capture, steering, ``block_output``) over Gemma-3 blocks."""

    def __init__(self, args: ModelArgs):
        super().__init__(args)
        self.layers = [TransformerBlock(args, i) for i in range(args.num_hidden_layers)]


class Model(g2.Model):
    """The Gemma-3 language model, called as :class:`backends.mlx_gemma2.Model` (capture, steering, caches)."""

    def __init__(self, args: ModelArgs):
        super().__init__(args)
        self.model = GemmaModel(args)

    def sanitize(self, weights: dict) -> dict:
        """The language model's weights under ``model.``; a multimodal checkpoint's vision tower and projector
        are dropped, and so is a (tied) ``lm_head``."""
        for prefix, to in _LANGUAGE_MODEL:
            if any(k.startswith(prefix) for k in weights):  # multimodal: only the language model's weights
                weights = {to + k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
                break
        return {k: v for k, v in weights.items() if k.startswith("model.") and "rotary_emb" not in k}
