"""Gemma-3 (text) in plain torch: Gemma-2's module (:mod:`backends.torch_gemma2`) with what Gemma-3 changes.

The same block (four ``(1 + w)`` RMSNorms, GeGLU, tied embeddings scaled by sqrt(hidden)), static KV cache and
prefill / step API; different here, as in transformers' ``Gemma3ForCausalLM``:

- queries and keys pass through their own RMSNorms over the head dimension (``q_norm`` / ``k_norm``) before
  RoPE;
- local (sliding-window) and global layers come from ``layer_types`` or, in the hub's configs,
  ``sliding_window_pattern`` (every pattern-th layer global); a local layer's query at position p sees the keys
  at p - window + 1 .. p (the mask of Gemma-2 and of transformers' ``sliding_window_overlay``);
- local layers rotate with base ``rope_local_base_freq``, global ones with ``rope_theta`` and an optional
  linear ``rope_scaling`` (transformers 5 spells both as ``rope_parameters`` per layer type);
- no attention or final-logit soft-capping; ``query_pre_attn_scalar`` sets the attention scale;
- a multimodal checkpoint (``model_type: gemma3``) is served as its language model: its ``text_config`` (only
  the fields that differ from ``Gemma3TextConfig``'s defaults, on the hub) and only the language model's
  tensors (``language_model.model.*`` as the hub stores them, ``model.language_model.*`` as transformers 5
  saves them); the vision tower's are never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from backends.torch_gemma2 import SLIDING, Attention, Block, Gemma2, Gemma2Config, RMSNorm, inv_freq

TEXT_TYPE, MULTIMODAL_TYPE = "gemma3_text", "gemma3"

# transformers' Gemma3TextConfig defaults: a sparse text_config leaves these out
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
    "query_pre_attn_scalar": 256, "sliding_window": 4096, "sliding_window_pattern": 6,
    "final_logit_softcapping": None, "attn_logit_softcapping": None,
}
_MM_PREFIXES = ("language_model.model.", "model.language_model.")  # the hub's (transformers 4.5x), transformers 5's


@dataclass(frozen=True)
class Gemma3Config(Gemma2Config):
    rope_local_base_freq: float = 10_000.0
    rope_scaling_factor: float = 1.0  # global layers' linear RoPE scaling (1: none)
    rope_local_scaling_factor: float = 1.0

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "Gemma3Config":
        """From a ``Gemma3ForCausalLM`` config.json or a multimodal one's ``text_config``, in transformers 4.5x's
        spelling (``sliding_window_pattern``, ``rope_scaling``, ``rope_local_base_freq``) or 5's
        (``layer_types``, ``rope_parameters`` per layer type); absent fields take Gemma3TextConfig's defaults."""
        kind = config.get("model_type")
        if kind == MULTIMODAL_TYPE:
            config = config.get("text_config") or {}
        elif kind != TEXT_TYPE:
            raise ValueError(f"this model runs Gemma-3 models; this checkpoint is a {kind!r}")
        c = {**TEXT_DEFAULTS, **config}
        if c.get("use_bidirectional_attention"):
            raise ValueError("a Gemma-3 with bidirectional attention (an embedding model) does not generate text")
        n = int(c["num_hidden_layers"])
        pattern = int(c["sliding_window_pattern"])
        types = c.get("layer_types") or ["full_attention" if (i + 1) % pattern == 0 else SLIDING for i in range(n)]
        if len(types) != n:
            raise ValueError(f"layer_types has {len(types)} entries for {n} layers")
        glob_theta, glob_factor = _rope(c, "full_attention", c.get("rope_scaling"), float(c["rope_theta"]))
        local_theta, local_factor = _rope(c, SLIDING, None, float(c["rope_local_base_freq"]))
        heads = int(c["num_attention_heads"])
        return cls(
            hidden_size=int(c["hidden_size"]),
            num_hidden_layers=n,
            intermediate_size=int(c["intermediate_size"]),
            num_attention_heads=heads,
            num_key_value_heads=int(c["num_key_value_heads"]),
            head_dim=int(c["head_dim"]),
            vocab_size=int(c["vocab_size"]),
            rms_norm_eps=float(c["rms_norm_eps"]),
            rope_theta=glob_theta,
            attn_logit_softcapping=c["attn_logit_softcapping"],
            final_logit_softcapping=c["final_logit_softcapping"],
            query_pre_attn_scalar=float(c["query_pre_attn_scalar"]),
            sliding_window=c["sliding_window"],
            max_position_embeddings=int(c["max_position_embeddings"]),
            layer_types=tuple(types),
            rope_local_base_freq=local_theta,
            rope_scaling_factor=glob_factor,
            rope_local_scaling_factor=local_factor,
        )


def _rope(c: dict[str, Any], layer_type: str, legacy_scaling: dict | None, theta: float) -> tuple[float, float]:
    """(base, linear factor) of one layer type's RoPE: transformers 5's ``rope_parameters[layer_type]`` when the
    config has it, else the legacy keys. Only the RoPE types Gemma-3 ships with (default, linear) are read."""
    params = c.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get(layer_type), dict):
        spec = params[layer_type]
        theta = float(spec.get("rope_theta", theta))
    else:
        spec = legacy_scaling or {}
    rope_type = spec.get("rope_type", spec.get("type", "default"))
    if rope_type == "default":
        return theta, 1.0
    if rope_type == "linear":
        return theta, float(spec["factor"])
    raise ValueError(f"RoPE type {rope_type!r} ({layer_type}) is not supported for Gemma-3; "
                     "supported: default, linear")


class Gemma3Attention(Attention):
    def __init__(self, cfg: Gemma2Config):
        super().__init__(cfg)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = super().project(x)
        return self.q_norm(q), self.k_norm(k), v


class Gemma3Block(Block):
    attention = Gemma3Attention


class Gemma3(Gemma2):
    family = "Gemma-3"
    config_class = Gemma3Config
    block = Gemma3Block

    @staticmethod
    def weight_name(config: dict[str, Any]) -> Callable[[str], str | None]:
        """The text model's tensors as they are; a multimodal checkpoint's language model renamed to them and
        everything else in it (vision tower, projector) left unread."""
        if config.get("model_type") != MULTIMODAL_TYPE:
            return Gemma2.weight_name(config)

        def name(key: str) -> str | None:
            for prefix in _MM_PREFIXES:
                if key.startswith(prefix):
                    return "model." + key[len(prefix):]
            return None

        return name

    def _init_rope(self, device: torch.device) -> None:
        cfg: Gemma3Config = self.cfg  # type: ignore[assignment]
        self._inv_freq = inv_freq(cfg.rope_theta, cfg.head_dim, device, cfg.rope_scaling_factor)
        self._inv_freq_local = inv_freq(cfg.rope_local_base_freq, cfg.head_dim, device, cfg.rope_local_scaling_factor)


__all__ = ["Gemma3", "Gemma3Config", "MULTIMODAL_TYPE", "TEXT_DEFAULTS", "TEXT_TYPE"]
