"""SAE encode (JumpReLU, ReLU or TopK) + feature filter + top-k on the torch device, in float32."""

from __future__ import annotations

import torch

from neuroscope.core.protocol import FeatureFilter, Steering
from neuroscope.core.sae import RMS_EPS, SAEWeights, check_encoder_options

SAE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class TorchSAE:
    """The encoder weights on the device, loaded once.

    ``dtype="bfloat16"`` halves their memory and bandwidth: the encode is then a bf16 GEMM (the kernels
    accumulate in float32) whose output is rounded to bf16 before the float32 bias and thresholds, so a feature
    within about 0.4 % of its threshold may flip. float32 (the default) is exact."""

    def __init__(
        self, sae: SAEWeights, device: torch.device, *, top_k: int, input_norm: str = "none", dtype: str = "float32"
    ):
        check_encoder_options(input_norm, dtype)
        self.d_sae = sae.d_sae
        self.k = min(top_k, sae.d_sae)
        self.input_norm = input_norm
        self.architecture, self.sae_k = sae.architecture, sae.k
        self.input_scale = sae.input_scale
        to = lambda a: torch.from_numpy(a).to(device=device, dtype=torch.float32)  # noqa: E731
        self.b_dec = to(sae.b_dec) if sae.apply_b_dec_to_input else None  # subtracted from the input
        self.W_enc = to(sae.W_enc).to(SAE_DTYPES[dtype]).contiguous()  # (d_model, d_sae)
        self.b_enc = to(sae.b_enc).to(SAE_DTYPES[dtype]).float()  # rounded like the weights, kept float32
        self.threshold = to(sae.threshold)
        # the decoder, for steering: (d_sae, d_model) in the SAE dtype (bf16 rounds each direction by ~0.4 %)
        self.W_dec = to(sae.W_dec).to(SAE_DTYPES[dtype]).contiguous()
        self._mask: torch.Tensor | None = None
        self._scale: torch.Tensor | None = None
        self.device = device
        # the filter as fixed tensors for the decode step (identity: scale 1, penalty 0), rewritten in place by
        # set_filter so that a compiled step (and its CUDA graph) reads the new filter at the same addresses
        self.dense_scale = torch.ones(self.d_sae, dtype=torch.float32, device=device)
        self.dense_penalty = torch.zeros(self.d_sae, dtype=torch.float32, device=device)
        self.counts = torch.zeros(self.d_sae, 2, dtype=torch.float32, device=device)
        self.set_filter(FeatureFilter())  # the identity

    def set_filter(self, flt: FeatureFilter) -> None:
        """Precompute what :meth:`pack` applies, so that a filter adds as few ops to a step as possible: the
        score is ``acts * scale + penalty`` (one ``addcmul``; ``penalty`` is -inf where the mask excludes a
        feature), and L0 and the masked count come from one product ``fired @ [1, excluded]``."""
        flt.validate(self.d_sae)
        self._mask = None if flt.mask is None else torch.from_numpy(flt.mask.astype(bool)).to(self.device)
        self._scale = None if flt.scale is None else torch.from_numpy(flt.scale.astype("float32")).to(self.device)
        excluded = torch.zeros(self.d_sae, dtype=torch.float32, device=self.device)
        self._penalty = None
        if self._mask is not None:
            excluded = (~self._mask).float()
            self._penalty = torch.zeros_like(excluded).masked_fill(~self._mask, float("-inf"))
        self._counts = torch.stack([torch.ones_like(excluded), excluded], dim=1)  # (d_sae, 2)
        self.counts.copy_(self._counts)
        self.dense_scale.copy_(self._scale if self._scale is not None else torch.ones_like(excluded))
        self.dense_penalty.copy_(self._penalty if self._penalty is not None else torch.zeros_like(excluded))
        # a masked feature can only win when fewer than k features are allowed: only then zero such winners
        self._zero_masked_winners = self._mask is not None and int(self._mask.sum()) < self.k

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Activations (n, d_sae) float32 of residuals ``x`` (n, d_model), by the SAE's architecture."""
        if self.architecture != "topk":
            return self._jumprelu(x, self.W_enc, self.b_enc, self.threshold)
        pre = self._pre(self.prepare(x), self.W_enc, self.b_enc)
        top, ids = torch.topk(pre, self.sae_k, dim=-1)  # TopK: the k largest pre-activations, then ReLU
        return torch.zeros_like(pre).scatter(-1, ids, torch.relu(top))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input in float32: the input norm, the SAE's input scale, minus ``b_dec`` if it asks."""
        x = x.float()
        if self.input_norm == "rms":
            x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + RMS_EPS)
        if self.input_scale is not None:
            x = x * self.input_scale
        if self.b_dec is not None:
            x = x - self.b_dec
        return x

    @staticmethod
    def _pre(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if W.dtype == torch.float32:
            return torch.addmm(b, x, W)
        return (x.to(W.dtype) @ W).float() + b

    def _jumprelu(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
        """JumpReLU of ``x`` (n, d_model) through encoder columns ``W`` (d_model, m), in float32 (a ReLU SAE's
        thresholds are zeros: the same rule)."""
        pre = self._pre(self.prepare(x), W, b)
        return torch.relu(pre) * (pre > thr)  # JumpReLU: relu(pre) where pre clears the threshold

    def steered_acts(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, thr: torch.Tensor,
                     ids: torch.Tensor) -> torch.Tensor:
        """The activations (n, m) of m steered features (``ids``; their encoder columns ``W``, biases ``b`` and
        thresholds ``thr``) of residuals ``x`` (n, d_model). JumpReLU and ReLU features depend on their own column
        only; whether a TopK feature is among the k depends on every feature, so that one is the full encode."""
        if self.architecture == "topk":
            return self.encode(x).index_select(-1, ids)
        return self._jumprelu(x, W, b, thr)

    def steerer(self, steering: Steering, layer: int) -> "TorchSteer":
        """A request's steering as fixed-shape device tensors, built once per request."""
        steering.check(self.d_sae)
        return TorchSteer(self, steering, layer)

    def topk(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (n, d_model) -> packed float32 (n, 2 + 2k): [l0, filtered, ids..., values...] (ids exact below
        2**24; the layout of ``neuroscope/core/records.py``)."""
        return self.pack(self.encode(x))

    def pack(self, acts: torch.Tensor) -> torch.Tensor:
        """JumpReLU activations (n, d_sae) -> their packed records (n, 2 + 2k): filter, top-k, counts."""
        # [l0, filtered]: what fired, and what fired but the mask excludes, in one product on the device
        head = (acts > 0).float() @ self._counts
        scale, penalty = self._scale, self._penalty
        if scale is not None and penalty is not None:
            scores = torch.addcmul(penalty, acts, scale)
        elif scale is not None:
            scores = acts * scale
        elif penalty is not None:
            scores = acts + penalty
        else:
            scores = acts
        top, ids = torch.topk(scores, self.k, dim=-1)
        vals = acts.gather(-1, ids)
        if self._zero_masked_winners:  # a masked-out feature never counts as a winner
            vals = vals.masked_fill(top == float("-inf"), 0.0)
        return torch.cat([head, ids.float(), vals], dim=-1)


    def pack_fixed(self, acts: torch.Tensor) -> torch.Tensor:
        """:meth:`pack` with the filter always applied through :attr:`dense_scale` / :attr:`dense_penalty` (the
        identity when none is set): the same records, with no Python branch on the filter, for the one decode
        step graph. ``acts * 1 + 0`` is ``acts`` exactly, so the ranking and values equal :meth:`pack`'s."""
        head = (acts > 0).float() @ self.counts
        top, ids = torch.topk(torch.addcmul(self.dense_penalty, acts, self.dense_scale), self.k, dim=-1)
        vals = acts.gather(-1, ids).masked_fill(top == float("-inf"), 0.0)  # a masked winner never counts
        return torch.cat([head, ids.float(), vals], dim=-1)

    def static_tensors(self) -> list[torch.Tensor]:
        """The tensors a compiled step reads, whose addresses never change (weights and filter buffers)."""
        extra = [self.b_dec] if self.b_dec is not None else []
        return [self.W_enc, self.b_enc, self.threshold, self.W_dec, self.dense_scale, self.dense_penalty, self.counts,
                *extra]


class TorchSteer:
    """Steering of one request at block ``layer``'s output, as fixed-shape device tensors.

    Built once per request from the m steered features: their encoder columns ``W_enc[:, ids]``, biases and
    thresholds (to read their activations ``a`` of the unsteered residual: :meth:`TorchSAE.steered_acts`), their
    decoder rows ``W_dec[ids]`` in float32, the values and a clamp flag per feature. Per position the residual becomes
    ``h + (values - clamp * a) @ W_dec[ids]``: ``add`` adds ``value * W_dec[i]``, ``clamp`` / ``ablate`` add
    ``(value - a_i) * W_dec[i]``. The same few small ops whatever the data, so a step keeps one shape."""

    def __init__(self, sae: TorchSAE, steering: Steering, layer: int):
        ids_np, values, clamp = steering.arrays()
        device = sae.device
        ids = torch.from_numpy(ids_np).to(device)
        self.layer = layer
        self.positions = steering.positions
        self._sae = sae
        self.ids = ids
        self.W_enc = sae.W_enc.index_select(1, ids).contiguous()  # (d_model, m), the SAE dtype
        self.b_enc = sae.b_enc.index_select(0, ids)
        self.threshold = sae.threshold.index_select(0, ids)
        self.W_dec = sae.W_dec.index_select(0, ids).float()  # (m, d_model)
        if sae.input_scale is not None:  # the decoder speaks the scaled input's units
            self.W_dec = self.W_dec / sae.input_scale
        self.values = torch.from_numpy(values).to(device)
        self.clamp = torch.from_numpy(clamp).to(device)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` (1, L, d_model) block output -> the steered block output, same shape and dtype."""
        x = h[0]
        a = self._sae.steered_acts(x, self.W_enc, self.b_enc, self.threshold, self.ids)  # (L, m), of the unsteered h
        coef = torch.addcmul(self.values, self.clamp, a, value=-1.0)  # values - clamp * a
        return torch.addmm(x.float(), coef, self.W_dec).to(h.dtype)[None]  # h + coef @ W_dec[ids]
