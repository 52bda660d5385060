"""A feature's decoder-cosine neighbours and direct logit effects on the torch device (the feature page).

Both are one matvec over weights already on the device: ``W_dec @ W_dec[i]`` divided by the rows' norms
(computed once), and the unembedding (Gemma ties it to the embedding) times ``W_dec[i] * (1 + final-norm
weight)``, in float32 row chunks so that a bf16 unembedding is never copied whole. ``topk`` on the device finds
the winners; only they (and any entry tied with the last) are copied to the host, which orders them with ties by
the lower index.
"""

from __future__ import annotations

import torch

from neuroscope.core.protocol import FeatureEffects, ranked

CHUNK = 32768  # unembedding rows per float32 matvec


class Effects:
    def __init__(self, W_dec: torch.Tensor, unembed: torch.Tensor, norm_weight: torch.Tensor):
        self.W_dec = W_dec  # (d_sae, d_model), the SAE's dtype
        self.unembed = unembed  # (vocab, d_model), the model's dtype
        self.scale = 1.0 + norm_weight.float()  # Gemma's RMSNorm scales by 1 + weight
        self._norms: torch.Tensor | None = None

    def norms(self) -> torch.Tensor:
        if self._norms is None:
            self._norms = torch.linalg.vector_norm(self.W_dec.float(), dim=1)
        return self._norms

    @torch.inference_mode()
    def __call__(self, index: int, *, neighbours: int, logits: int) -> FeatureEffects:
        d_sae = self.W_dec.shape[0]
        if not 0 <= index < d_sae:
            raise ValueError(f"feature {index} is out of range: the SAE has {d_sae} features")
        row = self.W_dec[index].float()
        norms = self.norms()
        dots = torch.mv(self.W_dec.float() if self.W_dec.dtype != torch.float32 else self.W_dec, row)
        denom = norms * norms[index]
        cos = torch.where(denom > 0, dots / denom.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(dots))
        cos[index] = float("-inf")
        n = min(neighbours, d_sae - 1)
        v = row * self.scale
        out = torch.empty(self.unembed.shape[0], dtype=torch.float32, device=v.device)
        for start in range(0, out.shape[0], CHUNK):
            out[start:start + CHUNK] = torch.mv(self.unembed[start:start + CHUNK].float(), v)
        m = min(logits, out.shape[0])
        c_ids, c_vals = _top(cos, n, largest=True)
        p_ids, p_vals = _top(out, m, largest=True)
        q_ids, q_vals = _top(out, m, largest=False)
        return FeatureEffects(c_ids, c_vals, p_ids, p_vals, q_ids, q_vals)


def _top(values: torch.Tensor, k: int, *, largest: bool):
    """The first ``k`` by value, ties by the lower index: ``topk`` finds the k-th value on the device, every
    entry at least as good comes back (k of them, more only on ties), and the host orders those."""
    kth = torch.topk(values, k, largest=largest).values[-1]
    ids = torch.nonzero(values >= kth if largest else values <= kth).flatten()
    return ranked(values[ids].cpu().numpy(), ids.cpu().numpy(), k, descending=largest)
