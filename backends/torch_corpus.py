"""The corpus pass on torch: a batch of samples through the model up to block N, the SAE encode, and the
per-feature reductions on the device. Only ``(4, d_sae)`` statistics (and, when asked, the packed top-k records)
are copied to the host."""

from __future__ import annotations

import numpy as np
import torch

from backends.torch_gemma2 import Gemma2
from backends.torch_sae import TorchSAE
from neuroscope.core.protocol import BatchStats, CorpusBatch, CorpusResult


def reduce(acts: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """``acts`` (n, d_sae) float32, ``counted`` (n,) bool -> (4, d_sae) float32: per feature, over the counted
    positions where it fired, how many, the sum of the activations, the sum of their squared deviations from
    this batch's mean (see :class:`neuroscope.core.protocol.BatchStats`) and the largest."""
    a = acts.masked_fill(~counted[:, None], 0.0)  # JumpReLU activations are >= 0: zero is "did not fire"
    fired = a > 0
    count = fired.sum(0, dtype=torch.float32)
    total = a.sum(0)
    dev = torch.where(fired, a - total / count.clamp(min=1.0), 0.0)
    return torch.stack([count, total, (dev * dev).sum(0), a.amax(0)])


@torch.inference_mode()
def corpus_pass(model: Gemma2, sae: TorchSAE, layer: int, batch: CorpusBatch, device: torch.device,
                *, records: bool = False) -> CorpusResult:
    tokens = torch.from_numpy(np.ascontiguousarray(batch.tokens, dtype=np.int64)).to(device)
    counted = torch.from_numpy(np.ascontiguousarray(batch.counted, dtype=bool)).to(device)
    B, L = tokens.shape
    hidden = model.block_output(tokens, layer).reshape(B * L, -1)
    acts = sae.encode(hidden)  # (B*L, d_sae) float32, stays on the device
    stats = reduce(acts, counted.reshape(-1)).cpu().numpy()  # the one copy of the statistics
    out_records = None
    if records:
        packed = sae.pack(acts).view(B, L, -1).cpu().numpy()
        out_records = [packed[b, : int(n)] for b, n in enumerate(batch.lengths)]
    tokens = int(batch.counted.sum())
    return CorpusResult(BatchStats(tokens, count=stats[0], sum=stats[1], m2=stats[2], max=stats[3]), out_records)
