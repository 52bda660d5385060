"""The corpus pass on torch: a batch of samples through the model up to block N, the SAE encode, and the
per-feature reductions on the device. Only ``(4, d_sae)`` statistics (and, when asked, the packed top-k records)
are copied to the host."""

from __future__ import annotations

import numpy as np
import torch

from backends.torch_gemma2 import Gemma2
from backends.torch_sae import TorchSAE
from neuroscope.protocol import BatchStats, CorpusBatch, CorpusResult


def reduce(acts: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """``acts`` (n, d_sae) float32, ``counted`` (n,) bool -> (4, d_sae) float32: per feature, over the counted
    positions, how many fired, the sum of the activations, the sum of their squares and the largest."""
    a = acts.masked_fill(~counted[:, None], 0.0)  # JumpReLU activations are >= 0: zero is "did not fire"
    return torch.stack([(a > 0).sum(0, dtype=torch.float32), a.sum(0), (a * a).sum(0), a.amax(0)])


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
    return CorpusResult(
        BatchStats(int(batch.counted.sum()), stats[0], stats[1], stats[2], stats[3]), out_records
    )
