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


class LogitProcessor:
    """One request's logit processing on the device, fixed shapes built once: a dense (vocab,) bias, a (vocab,)
    count of the tokens generated so far (updated on the device after each draw) for the presence / frequency
    penalties, and the logprob tail of the record (``[logprob, n ids, n logprobs]`` from the log_softmax of the
    processed logits, before temperature)."""

    def __init__(self, params, vocab: int, device: torch.device) -> None:
        self.bias = None
        if params.logit_bias:
            ids, vals = params.bias_arrays()
            self.bias = torch.zeros(vocab, dtype=torch.float32, device=device)
            self.bias.index_put_((torch.from_numpy(ids).to(device),), torch.from_numpy(vals).to(device),
                                 accumulate=True)
        self.counts = torch.zeros(vocab, dtype=torch.float32, device=device) if params.penalized else None
        self.presence = float(params.presence_penalty)
        self.frequency = float(params.frequency_penalty)
        self.n = params.logprobs

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """(1, vocab) logits -> the processed float32 logits."""
        logits = logits.float()
        if self.bias is not None:
            logits = logits + self.bias
        if self.counts is not None:
            logits = logits - (self.frequency * self.counts + self.presence * (self.counts > 0).float())
        return logits

    def after(self, logits: torch.Tensor, token: torch.Tensor) -> torch.Tensor | None:
        """Count the drawn ``token`` (1,) and return its logprob tail (or None when logprobs are off)."""
        if self.counts is not None:
            self.counts.index_add_(0, token.view(1), torch.ones(1, dtype=torch.float32, device=token.device))
        if self.n is None:
            return None
        lp = torch.log_softmax(logits, dim=-1)[0]
        chosen = lp.gather(0, token.view(1))
        if self.n == 0:
            return chosen
        top = lp.topk(self.n)
        return torch.cat([chosen, top.indices.float(), top.values])
