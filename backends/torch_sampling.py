"""Token sampling on the device with every per-request parameter a tensor: one graph for all requests.

Greedy, temperature and top-p are computed in the same ops whatever the request asks (greedy is selected with
``torch.where`` on ``temperature > 0``, not a Python branch), and the random draw is Philox keyed by the
request's seed with the drawn token's position as the counter (:mod:`backends.torch_philox`), so the compiled
decode step and the eager one draw the same token for the same seed. Logit processing (logit_bias,
presence / frequency penalties, logprobs) uses dense (vocab,) tensors that are always present (zeros when a
request asks for none).
"""

from __future__ import annotations

import torch

from backends.torch_philox import uniform

MAX_LOGPROBS = 20  # the step always computes this many top logprobs when asked; the record keeps the first n


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, seed: torch.Tensor,
           counter: torch.Tensor) -> torch.Tensor:
    """``logits`` (B, vocab) float32 -> (B,) int64 tokens: per row, the argmax when its ``temperature`` is 0,
    else a draw from the top-``top_p`` nucleus of ``softmax(logits / temperature)`` by inverse CDF with the
    Philox uniform of (``seed``, ``counter``), the position of the drawn token. ``temperature``, ``top_p`` and
    ``seed`` are () tensors for one row or (B,) for a batch, ``counter`` (B,); every op is row by row, so a
    row's token never depends on its neighbours."""
    temperature, top_p = temperature.reshape(-1, 1), top_p.reshape(-1, 1)
    greedy = logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature.clamp_min(1e-6), dim=-1)
    sorted_p, sorted_idx = probs.sort(dim=-1, descending=True, stable=True)
    cum = sorted_p.cumsum(dim=-1)
    # keep the smallest prefix whose mass reaches top_p: always the first token (a top_p that rounds to 0 in
    # float32 is greedy), everything at top_p = 1
    first = torch.arange(sorted_p.shape[-1], device=sorted_p.device) == 0
    keep = ((cum - sorted_p) < top_p) | (top_p >= 1.0) | first
    kept = sorted_p * keep
    cdf = kept.cumsum(dim=-1)
    u = uniform(seed, counter).reshape(-1, 1) * cdf[..., -1:]
    # the first kept index whose cumulative mass exceeds u (clamped: rounding can put u at the very top)
    choice = torch.minimum((cdf <= u).sum(dim=-1, keepdim=True), keep.sum(dim=-1, keepdim=True) - 1)
    sampled = sorted_idx.gather(-1, choice).squeeze(-1)
    return torch.where(temperature.reshape(-1) > 0, sampled, greedy)


def process(logits: torch.Tensor, bias: torch.Tensor, counts: torch.Tensor, presence: torch.Tensor,
            frequency: torch.Tensor) -> torch.Tensor:
    """OpenAI's rule on (1, vocab) logits, in float32: ``+ bias``, then ``- (frequency * count + presence *
    (count > 0))`` with ``count`` the (vocab,) tokens generated so far (all zeros: the logits unchanged)."""
    return logits.float() + bias - (frequency * counts + presence * (counts > 0).float())


def logprob_tail(logits: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """The record's logprob tail for the drawn ``token`` (1,): ``[logprob, MAX_LOGPROBS ids, MAX_LOGPROBS
    logprobs]`` from the log_softmax of the processed logits (the backend keeps the first n of each)."""
    lp = torch.log_softmax(logits, dim=-1)[0]
    top = lp.topk(MAX_LOGPROBS)
    return torch.cat([lp.gather(0, token.view(1)), top.indices.float(), top.values])


def logprob_tails(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """:func:`logprob_tail` of each row of (B, vocab) ``logits`` for its drawn token (B,): (B, 1 + 2 MAX_LOGPROBS)."""
    lp = torch.log_softmax(logits, dim=-1)
    top = lp.topk(MAX_LOGPROBS, dim=-1)
    return torch.cat([lp.gather(1, tokens.view(-1, 1)), top.indices.float(), top.values], dim=1)


def tail_index(record_width: int, n: int, device: torch.device) -> torch.Tensor:
    """Indices that cut a record ending in a ``MAX_LOGPROBS`` tail down to one ending in an ``n`` tail
    (``neuroscope/core/records.py``'s ``[logprob, n ids, n logprobs]``)."""
    head = record_width - (1 + 2 * MAX_LOGPROBS)
    ids = list(range(head + 1)) + [head + 1 + i for i in range(n)] + [head + 1 + MAX_LOGPROBS + i for i in range(n)]
    return torch.tensor(ids, dtype=torch.long, device=device)
