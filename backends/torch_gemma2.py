"""Gemma-2 in plain torch, with a static KV cache and a fixed-shape decode step that also returns block N.

The same safetensors as transformers' ``Gemma2ForCausalLM`` (parameter names and shapes match, so the
weights load as they are, without a copy), and the same computation: Gemma's ``(1 + w)`` RMSNorm in float32,
grouped-query attention with RoPE, ``query_pre_attn_scalar``, attention and final-logit soft-capping,
alternating local (sliding-window) and global layers, GeGLU (tanh GELU) and the embedding scale in the
activation dtype. Owning the model keeps the backend independent of transformers' forward API (its cache and
keyword arguments change between releases) and gives the decode step a fixed shape: the position is a
tensor, the masks are built from it, and the cache is written in place at that position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from backends.torch_weights import read_weights

SLIDING = "sliding_attention"


class Steer(Protocol):
    """Rewrites block ``layer``'s output (1, L, d) in the forward pass (feature steering)."""

    layer: int

    def __call__(self, h: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Gemma2Config:
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attn_logit_softcapping: float | None = 50.0
    final_logit_softcapping: float | None = 30.0
    query_pre_attn_scalar: float = 256.0
    sliding_window: int | None = 4096
    max_position_embeddings: int = 8192
    layer_types: tuple[str, ...] = field(default=())

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "Gemma2Config":
        """From a checkpoint's ``config.json`` (any transformers release's spelling of it)."""
        if config.get("model_type") != "gemma2":
            raise ValueError(f"this backend runs Gemma-2 models; this checkpoint is a {config.get('model_type')!r}")
        n = int(config["num_hidden_layers"])
        rope = config.get("rope_parameters") or {}
        heads = int(config["num_attention_heads"])
        types = config.get("layer_types") or [SLIDING if i % 2 == 0 else "full_attention" for i in range(n)]
        if len(types) != n:
            raise ValueError(f"layer_types has {len(types)} entries for {n} layers")
        return cls(
            hidden_size=int(config["hidden_size"]),
            num_hidden_layers=n,
            intermediate_size=int(config["intermediate_size"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
            vocab_size=int(config["vocab_size"]),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
            attn_logit_softcapping=config.get("attn_logit_softcapping", 50.0),  # transformers' defaults when absent
            final_logit_softcapping=config.get("final_logit_softcapping", 30.0),
            query_pre_attn_scalar=float(config.get("query_pre_attn_scalar", 256)),
            sliding_window=config.get("sliding_window", 4096),
            max_position_embeddings=int(config.get("max_position_embeddings", 8192)),
            layer_types=tuple(types),
        )

    def is_sliding(self, i: int) -> bool:
        return self.sliding_window is not None and self.layer_types[i] == SLIDING


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: computed in float32, scaled by ``1 + weight``, cast back."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dims))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)


def _softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if not cap else torch.tanh(x / cap) * cap


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class KVCache:
    """Keys and values for ``size`` positions of ``batch`` rows, for the first ``layers`` layers (all by default),
    allocated once per request or corpus batch (static shape)."""

    def __init__(self, cfg: Gemma2Config, size: int, dtype: torch.dtype, device: torch.device, *, batch: int = 1,
                 layers: int | None = None):
        shape = (batch, cfg.num_key_value_heads, size, cfg.head_dim)
        n = cfg.num_hidden_layers if layers is None else layers
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n)]
        self.size = size
        self.key_positions = torch.arange(size, device=device)


class Attention(nn.Module):
    def __init__(self, cfg: Gemma2Config):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.scale = cfg.query_pre_attn_scalar**-0.5
        self.softcap = cfg.attn_logit_softcapping
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` (B, L, d) -> queries (B, heads, L, head_dim), keys and values (B, kv heads, L, head_dim)."""
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.n_kv, self.head_dim).transpose(1, 2)
        return q, k, v

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """:meth:`project` with RoPE on the queries and keys (``cos``/``sin`` broadcast over (B, heads, L,
        head_dim)): what every step (solo, batched, compiled) writes to the cache and attends with."""
        q, k, v = self.project(x)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v

    def forward(self, x, cos, sin, mask, keys, values, write) -> torch.Tensor:
        """``x`` (B, L, d) at the positions ``write`` (a (L,) tensor, the same for every row) attends to
        ``keys``/``values`` (B, n_kv, S', head_dim) of the cache after they are written there; ``mask`` (L, S) is
        True where a query may see a key."""
        B, L, _ = x.shape
        q, k, v = self.qkv(x, cos, sin)
        keys.index_copy_(2, write, k)
        values.index_copy_(2, write, v)
        S = mask.shape[-1]
        ks, vs = keys[:, :, :S], values[:, :, :S]
        rep = self.n_heads // self.n_kv  # grouped-query attention without materialising repeated keys
        q = q.reshape(B, self.n_kv, rep * L, self.head_dim)
        scores = _softcap(torch.matmul(q, ks.transpose(2, 3)) * self.scale, self.softcap)
        scores = scores.view(B, self.n_kv, rep, L, S).masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs.view(B, self.n_kv, rep * L, S), vs).view(B, self.n_heads, L, self.head_dim)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class Block(nn.Module):
    attention = Attention  # a family's attention (Gemma-3: q/k norms)

    def __init__(self, cfg: Gemma2Config, sliding: bool):
        super().__init__()
        self.sliding = sliding  # local (sliding-window mask and, in Gemma-3, the local RoPE) or global
        self.self_attn = self.attention(cfg)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        eps = cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)

    def forward(self, x, cos, sin, mask, keys, values, write) -> torch.Tensor:
        h = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask, keys, values, write))
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class _Body(nn.Module):
    def __init__(self, cfg: Gemma2Config, block: type[Block]):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([block(cfg, cfg.is_sliding(i)) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Gemma2(nn.Module):
    """``prefill`` runs prompt chunks, ``step`` one token at a tensor position; both fill a :class:`KVCache`
    and return (logits of the last position, block ``capture``'s output).

    The steps (here, :mod:`backends.torch_batch`, :mod:`backends.torch_corpus`) reach the family through
    :meth:`embed`, :meth:`rope`, :meth:`masks`, each block's ``sliding`` and attention's ``qkv``, and
    :meth:`logits`; a second family (:mod:`backends.torch_gemma3`) overrides what differs."""

    family = "Gemma-2"
    config_class = Gemma2Config
    block = Block

    def __init__(self, cfg: Gemma2Config):
        super().__init__()
        self.cfg = cfg
        self.model = _Body(cfg, self.block)
        self._inv_freq: torch.Tensor | None = None  # global layers' RoPE (Gemma-2: every layer's)
        self._inv_freq_local: torch.Tensor | None = None  # local layers' RoPE when it differs
        self._embed_scale: torch.Tensor | None = None

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_checkpoint(cls, path: Path, config: dict[str, Any], dtype: torch.dtype, device: torch.device) -> "Gemma2":
        """Build on the meta device and adopt the checkpoint's tensors (no random init, no second copy)."""
        cfg = cls.config_class.from_dict(config)
        weights = read_weights(Path(path), cls.weight_name(config), dtype, device)
        with torch.device("meta"):
            model = cls(cfg)
        expected = set(model.state_dict())
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        if missing or unexpected:
            raise ValueError(
                f"the checkpoint does not match {cls.family}: "
                + (f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''} " if missing else "")
                + (f"unexpected {', '.join(unexpected[:3])}{' …' if len(unexpected) > 3 else ''}" if unexpected else "")
            )
        model.load_state_dict(weights, strict=True, assign=True)
        # Gemma scales the embeddings in the activation dtype (sqrt(hidden_size) rounded to it), once per model
        model._embed_scale = torch.tensor(cfg.hidden_size**0.5, dtype=dtype, device=device)
        model._init_rope(device)
        return model.eval()

    @staticmethod
    def weight_name(config: dict[str, Any]) -> Callable[[str], str | None]:
        """A stored tensor's name -> its name in this model, or None for a tensor it does not read (the tied
        ``lm_head``, RoPE buffers some exports keep)."""
        return lambda name: None if name.startswith("lm_head.") or "rotary" in name else name

    def _init_rope(self, device: torch.device) -> None:
        self._inv_freq = inv_freq(self.cfg.rope_theta, self.cfg.head_dim, device)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def static_tensors(self) -> list[torch.Tensor]:
        """Tensors the forward reads besides its parameters (their addresses never change)."""
        return [t for t in (self._inv_freq, self._inv_freq_local, self._embed_scale) if t is not None]

    def new_cache(self, size: int) -> KVCache:
        return KVCache(self.cfg, size, self.dtype, self.model.embed_tokens.weight.device)

    def block_output(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Prefill only, for the corpus pass: ``tokens`` (B, L), each row from position 0 and right-padded, ->
        block ``layer``'s output (B, L, d). The forward stops there (no later block, no norm, no logits). A
        temporary cache of ``layer + 1`` layers holds the batch's keys; with causal masks a real position never
        sees the pads after it, so every row shares positions 0..L-1 and the masks of ``prefill``."""
        B, L = tokens.shape
        positions = torch.arange(L, device=tokens.device)
        cache = KVCache(self.cfg, L, self.dtype, tokens.device, batch=B, layers=layer + 1)
        h = self.embed(tokens)
        ropes = [(c[None, None], s[None, None]) for c, s in self.rope(positions, h.dtype)]
        masks = self.masks(positions, positions)
        for i, block in enumerate(self.model.layers[: layer + 1]):
            h = block(h, *ropes[block.sliding], masks[block.sliding], cache.keys[i], cache.values[i], positions)
        return h

    # ------------------------------------------------------------------------------------------- forward
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (any shape) -> their scaled embeddings (shape + (d,))."""
        return self.model.embed_tokens(tokens) * self._embed_scale

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """RoPE's (cos, sin) at ``positions`` (any shape -> shape + (head_dim,)) for the global layers, then
        for the local ones: index it with a block's ``sliding``."""
        glob = _cos_sin(positions, self._inv_freq, dtype)
        return glob, (glob if self._inv_freq_local is None else _cos_sin(positions, self._inv_freq_local, dtype))

    def masks(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global, local) masks, True where a query at ``q_pos`` (any shape) sees a key at ``k_pos`` (S,):
        shape q_pos.shape + (S,). Local layers see the last ``sliding_window`` positions, their own included."""
        seen = k_pos <= q_pos[..., None]
        window = self.cfg.sliding_window
        local = seen & (k_pos > q_pos[..., None] - window) if window is not None else seen
        return seen, local

    def _run(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, n_keys: int, capture: int | None,
             steer: Steer | None = None):
        h = self.embed(tokens)[None]  # (1, L, d)
        ropes = [(c[None, None], s[None, None]) for c, s in self.rope(positions, h.dtype)]
        masks = self.masks(positions, cache.key_positions[:n_keys])
        captured = None
        for i, layer in enumerate(self.model.layers):
            h = layer(h, *ropes[layer.sliding], masks[layer.sliding], cache.keys[i], cache.values[i], positions)
            if steer is not None and i == steer.layer:  # the steered output flows on and is what is captured
                h = steer(h)
            if i == capture:
                captured = h[0]
        return h, captured

    def logits(self, h_last: torch.Tensor) -> torch.Tensor:
        """The last residuals (..., d) -> logits (..., vocab): final norm, tied unembedding, soft-cap if any."""
        h = self.model.norm(h_last)
        return _softcap(F.linear(h, self.model.embed_tokens.weight), self.cfg.final_logit_softcapping)

    def prefill(
        self, ids: torch.Tensor, cache: KVCache, *, capture: int | None, all_positions: bool, chunk: int = 2048,
        steer: Steer | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``ids`` (n,) from position 0 -> logits (1, vocab) of the last position and block ``capture``'s
        output at every position (n, d) with ``all_positions``, else at the last one (1, d). ``steer``
        rewrites block ``steer.layer``'s output at every position."""
        gen = self.prefill_chunks(ids, cache, capture=capture, all_positions=all_positions, chunk=chunk, steer=steer)
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value

    def prefill_chunks(
        self, ids: torch.Tensor, cache: KVCache, *, capture: int | None, all_positions: bool, chunk: int = 2048,
        steer: Steer | None = None,
    ) -> Generator[None, None, tuple[torch.Tensor, torch.Tensor | None]]:
        """:meth:`prefill` one chunk at a time: yields after each chunk but the last, returns what it returns
        (a scheduler runs other work between chunks)."""
        n = ids.shape[0]
        kept: list[torch.Tensor] = []
        h = captured = None
        for start in range(0, n, chunk):
            if start:
                yield
            end = min(n, start + chunk)
            positions = torch.arange(start, end, device=ids.device)
            h, captured = self._run(ids[start:end], positions, cache, end, capture, steer)
            if all_positions and captured is not None:
                kept.append(captured)
        if captured is not None:
            captured = torch.cat(kept) if all_positions else captured[-1:]
        return self.logits(h[:, -1]), captured

    def step(self, token: torch.Tensor, position: torch.Tensor, cache: KVCache, *, capture: int | None,
             steer: Steer | None = None):
        """One token (1,) at ``position`` (1,), a tensor: every shape is fixed, whatever the position."""
        h, captured = self._run(token, position, cache, cache.size, capture, steer)
        return self.logits(h[:, -1]), captured


def inv_freq(theta: float, head_dim: int, device: torch.device, factor: float = 1.0) -> torch.Tensor:
    """RoPE's inverse frequencies (float32), divided by ``factor`` for linear scaling."""
    freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))
    return freq / factor if factor != 1.0 else freq


def _cos_sin(positions: torch.Tensor, inv: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = positions.float()[..., None] * inv
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def cache_size(needed: int, minimum: int = 256) -> int:
    """The static cache's length for ``needed`` positions: the next power of two (few distinct shapes)."""
    return max(minimum, 1 << math.ceil(math.log2(max(1, needed))))
