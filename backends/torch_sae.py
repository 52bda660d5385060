"""JumpReLU encode + feature filter + top-k on the torch device, in float32."""

from __future__ import annotations

import torch

from neuroscope.protocol import FeatureFilter
from neuroscope.sae import RMS_EPS, SAEWeights, check_encoder_options


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
        to = lambda a: torch.from_numpy(a).to(device=device, dtype=torch.float32)  # noqa: E731
        self.W_enc = to(sae.W_enc).to(SAE_DTYPES[dtype]).contiguous()  # (d_model, d_sae)
        self.b_enc = to(sae.b_enc).to(SAE_DTYPES[dtype]).float()  # rounded like the weights, kept float32
        self.threshold = to(sae.threshold)
        self._mask: torch.Tensor | None = None
        self._scale: torch.Tensor | None = None
        self.device = device
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
        # a masked feature can only win when fewer than k features are allowed: only then zero such winners
        self._zero_masked_winners = self._mask is not None and int(self._mask.sum()) < self.k

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.input_norm == "rms":
            x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + RMS_EPS)
        if self.W_enc.dtype == torch.float32:
            pre = torch.addmm(self.b_enc, x, self.W_enc)
        else:
            pre = (x.to(self.W_enc.dtype) @ self.W_enc).float() + self.b_enc
        return torch.relu(pre) * (pre > self.threshold)  # JumpReLU: relu(pre) where pre clears the threshold

    def topk(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (n, d_model) -> packed float32 (n, 2 + 2k): [l0, filtered, ids..., values...] (ids exact below
        2**24; the layout of ``neuroscope/records.py``)."""
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
