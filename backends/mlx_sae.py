"""SAE encode (JumpReLU, ReLU or TopK) + feature filter + top-k in MLX, compiled, in float32.

Everything here is lazy: :meth:`MLXSAE.topk` only builds graph on top of the captured residual, so the
backend can evaluate the next token and its features together with one ``mx.async_eval``. The semantics
are those of ``backends/torch_sae.py``: the filter's scale multiplies the ranking score only, masked
features cannot win, reported activations stay raw, and the k winners come strongest first.
"""

from __future__ import annotations

import functools

import mlx.core as mx
import numpy as np

from neuroscope.core.protocol import FeatureFilter, Steering
from neuroscope.core.sae import RMS_EPS, SAEWeights, check_encoder_options

SAE_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16}


class MLXSAE:
    """The SAE's encoder weights as mx arrays, loaded once, and the compiled encode / top-k functions.

    ``dtype="bfloat16"`` halves the encoder's memory and bandwidth: the encode is then a bf16 matmul (MLX
    accumulates in float32) whose output is rounded to bf16 before the float32 bias and thresholds, so a
    feature within about 0.4 % of its threshold may flip. float32 (the default) is exact. (Up-casting the
    weights inside the graph instead was 5x slower than float32 on CPU.)
    """

    def __init__(self, sae: SAEWeights, *, top_k: int, input_norm: str = "none", dtype: str = "float32"):
        check_encoder_options(input_norm, dtype)
        self.d_sae = sae.d_sae
        self.k = min(top_k, sae.d_sae)
        self.input_norm = input_norm
        self.dtype = dtype
        self.architecture, self.sae_k, self.input_scale = sae.architecture, sae.k, sae.input_scale
        # subtracted from the input when the SAE asks (a Python attribute, not an argument: part of the graph)
        self._b_dec = mx.array(np.asarray(sae.b_dec, dtype=np.float32)) if sae.apply_b_dec_to_input else None
        wdt = SAE_DTYPES[dtype]
        self.W_enc = mx.array(np.ascontiguousarray(sae.W_enc, dtype=np.float32)).astype(wdt)  # (d_model, d_sae)
        self.b_enc = mx.array(np.asarray(sae.b_enc, dtype=np.float32)).astype(wdt).astype(mx.float32)
        self.threshold = mx.array(np.asarray(sae.threshold, dtype=np.float32))  # thresholds stay float32
        # the decoder, for steering: (d_sae, d_model) in the SAE dtype (bf16 rounds each direction by ~0.4 %)
        self.W_dec = mx.array(np.ascontiguousarray(sae.W_dec, dtype=np.float32)).astype(wdt)
        self._scale = mx.ones((self.d_sae,), dtype=mx.float32)
        self._mask = mx.ones((self.d_sae,), dtype=mx.bool_)
        mx.eval(self.W_enc, self.b_enc, self.threshold, self.W_dec, self._scale, self._mask)
        self._encode = mx.compile(self._encode_impl)
        self._topk = mx.compile(self._topk_impl)
        self._steer = mx.compile(self._steer_impl)

    def set_filter(self, flt: FeatureFilter) -> None:
        """Identity by default; otherwise a per-feature ranking scale and an exclusion mask."""
        flt.validate(self.d_sae)
        ones = mx.ones((self.d_sae,), mx.float32)
        self._scale = ones if flt.scale is None else mx.array(flt.scale.astype(np.float32))
        self._mask = ones.astype(mx.bool_) if flt.mask is None else mx.array(flt.mask.astype(bool))
        mx.eval(self._scale, self._mask)

    # ------------------------------------------------------------------------------------------ graphs
    def _prepare(self, x: mx.array) -> mx.array:
        """The encoder's input in float32: the input norm, the SAE's input scale, minus ``b_dec`` if it asks."""
        x = x.astype(mx.float32)
        if self.input_norm == "rms":
            x = x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + RMS_EPS)
        if self.input_scale is not None:
            x = x * self.input_scale
        if self._b_dec is not None:
            x = x - self._b_dec
        return x

    def _jumprelu_impl(self, x: mx.array, W: mx.array, b: mx.array, thr: mx.array) -> mx.array:
        """JumpReLU through encoder columns ``W`` (a ReLU SAE's thresholds are zeros: the same rule)."""
        x = self._prepare(x)
        if W.dtype == mx.float32:
            pre = x @ W + b
        else:
            pre = (x.astype(W.dtype) @ W).astype(mx.float32) + b
        return mx.where(pre > thr, mx.maximum(pre, 0.0), mx.zeros_like(pre))  # JumpReLU: relu(pre) past the threshold

    def _encode_impl(self, x: mx.array, W: mx.array, b: mx.array, thr: mx.array) -> mx.array:
        if self.architecture != "topk":
            return self._jumprelu_impl(x, W, b, thr)
        x = self._prepare(x)
        pre = x @ W + b if W.dtype == mx.float32 else (x.astype(W.dtype) @ W).astype(mx.float32) + b
        k = self.sae_k
        kth = mx.sort(pre, axis=-1)[..., -k:][..., :1]  # the k-th largest pre-activation
        # TopK: the k largest, then ReLU (ties at the k-th value are measure-zero for real weights)
        return mx.where(pre >= kth, mx.maximum(pre, 0.0), mx.zeros_like(pre))

    def _topk_impl(self, x, W, b, thr, scale, mask) -> mx.array:
        return self._pack_impl(self._encode_impl(x, W, b, thr), scale, mask)

    def _pack_impl(self, acts, scale, mask) -> mx.array:
        fired = acts > 0
        l0 = fired.sum(axis=-1, keepdims=True).astype(mx.float32)
        filtered = (fired & ~mask).sum(axis=-1, keepdims=True).astype(mx.float32)  # fired, excluded by the mask
        scores = mx.where(mask, acts * scale, mx.array(-mx.inf, mx.float32))
        k = self.k
        ids = mx.argpartition(-scores, kth=k - 1, axis=-1)[..., :k]
        order = mx.argsort(-mx.take_along_axis(scores, ids, axis=-1), axis=-1)  # strongest first
        ids = mx.take_along_axis(ids, order, axis=-1)
        vals = mx.take_along_axis(acts, ids, axis=-1)
        vals = mx.where(mx.take(mask, ids), vals, mx.zeros_like(vals))  # a masked feature never wins
        return mx.concatenate([l0, filtered, ids.astype(mx.float32), vals], axis=-1)

    def _steer_impl(self, h, W, b, thr, ids, W_dec, values, clamp) -> mx.array:
        if self.architecture == "topk":  # membership in the k depends on every feature: the full encode
            a = mx.take(self._encode_impl(h, self.W_enc, self.b_enc, self.threshold), ids, axis=-1)
        else:  # (..., m): the steered features' activations of the unsteered h, from their own columns
            a = self._jumprelu_impl(h, W, b, thr)
        delta = (values - clamp * a) @ W_dec  # (..., d_model) float32
        return (h.astype(mx.float32) + delta).astype(h.dtype)

    # ------------------------------------------------------------------------------------------ public
    def encode(self, x: mx.array) -> mx.array:
        """JumpReLU activations (n, d_sae) float32 of residuals ``x`` (n, d_model), lazily."""
        return self._encode(x, self.W_enc, self.b_enc, self.threshold)

    def pack(self, acts: mx.array) -> mx.array:
        """JumpReLU activations (n, d_sae) -> their packed records (n, 2 + 2k), as :meth:`topk` packs, lazily."""
        return self._pack_compiled(acts, self._scale, self._mask)

    @functools.cached_property
    def _pack_compiled(self):
        return mx.compile(self._pack_impl)

    def topk(self, x: mx.array) -> mx.array:
        """``x`` (n, d_model) -> packed float32 (n, 2 + 2k): [l0, filtered, ids..., values...], lazily (the layout
        of ``neuroscope/core/records.py``).

        Ids travel as float32 (exact below 2**24) so a token's whole record is one small array.
        """
        return self._topk(x, self.W_enc, self.b_enc, self.threshold, self._scale, self._mask)

    def steerer(self, steering: Steering, layer: int) -> "MLXSteer":
        """A request's steering as fixed-shape arrays, built (and evaluated) once per request."""
        steering.check(self.d_sae)
        return MLXSteer(self, steering, layer)


class MLXSteer:
    """Steering of one request at block ``layer``'s output (the semantics of ``backends/torch_sae.py``'s
    ``TorchSteer``): the m steered features' encoder columns, biases, thresholds and decoder rows (float32),
    values and clamp flags, gathered once; per position ``h + (values - clamp * a) @ W_dec[ids]`` with ``a``
    the features' activations of the unsteered ``h`` (a TopK SAE's from the full encode). Lazy and compiled,
    part of the token's one graph."""

    def __init__(self, sae: MLXSAE, steering: Steering, layer: int):
        ids_np, values, clamp = steering.arrays()
        ids = mx.array(ids_np.astype(np.int32))
        self.layer = layer
        self.positions = steering.positions
        self._fn = sae._steer
        self.ids = ids
        self.W_enc = mx.take(sae.W_enc, ids, axis=1)  # (d_model, m), the SAE dtype
        self.b_enc = mx.take(sae.b_enc, ids)
        self.threshold = mx.take(sae.threshold, ids)
        self.W_dec = mx.take(sae.W_dec, ids, axis=0).astype(mx.float32)  # (m, d_model)
        if sae.input_scale is not None:  # the decoder speaks the scaled input's units
            self.W_dec = self.W_dec / sae.input_scale
        self.values = mx.array(values)
        self.clamp = mx.array(clamp)
        mx.eval(self.W_enc, self.b_enc, self.threshold, self.W_dec, self.values, self.clamp)

    def __call__(self, h: mx.array) -> mx.array:
        """``h`` (B, L, d_model) block output -> the steered block output, same shape and dtype (lazily)."""
        return self._fn(h, self.W_enc, self.b_enc, self.threshold, self.ids, self.W_dec, self.values, self.clamp)
