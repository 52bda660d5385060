"""Token sampling on the device (greedy, temperature, top-p) with a seeded generator."""

from __future__ import annotations

import torch


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """``logits`` (1, vocab) float -> (1,) int64 token id, without leaving the device."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, sorted_idx = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(dim=-1)
        # keep the smallest prefix whose mass reaches top_p (always keeps the first token)
        sorted_p = sorted_p.masked_fill(cum - sorted_p >= top_p, 0.0)
        choice = torch.multinomial(sorted_p, 1, generator=generator)
        return sorted_idx.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
