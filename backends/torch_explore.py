"""A feature's decoder-cosine neighbours and direct logit effects on the torch device (the feature page).

Both are one matvec over weights already on the device: ``W_dec @ W_dec[i]`` divided by the rows' norms
(computed once), and the unembedding (Gemma ties it to the embedding) times ``W_dec[i] * (1 + final-norm
weight)``, in float32 row chunks so that a bf16 unembedding is never copied whole. A stable sort on the device
ranks them (ties by the lower index); only the winners are copied to the host.
"""

from __future__ import annotations

import torch

from neuroscope.core.protocol import FeatureEffects

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
        c_vals, c_ids = torch.sort(cos, descending=True, stable=True)
        v = row * self.scale
        out = torch.empty(self.unembed.shape[0], dtype=torch.float32, device=v.device)
        for start in range(0, out.shape[0], CHUNK):
            out[start:start + CHUNK] = torch.mv(self.unembed[start:start + CHUNK].float(), v)
        m = min(logits, out.shape[0])
        p_vals, p_ids = torch.sort(out, descending=True, stable=True)
        q_vals, q_ids = torch.sort(out, stable=True)
        small = torch.cat([c_ids[:n].float(), c_vals[:n], p_ids[:m].float(), p_vals[:m], q_ids[:m].float(), q_vals[:m]])
        # ids go through float32: exact below 2**24, far above any vocabulary or SAE width here
        host = small.cpu().numpy()
        parts = [host[:n], host[n:2 * n], host[2 * n:2 * n + m], host[2 * n + m:2 * n + 2 * m],
                 host[2 * n + 2 * m:2 * n + 3 * m], host[2 * n + 3 * m:]]
        return FeatureEffects(parts[0].astype("int64"), parts[1], parts[2].astype("int64"), parts[3],
                              parts[4].astype("int64"), parts[5])
