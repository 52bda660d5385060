"""An independent nucleus (top-p) reference: transformers' logits for a sequence, then numpy."""

from __future__ import annotations

import numpy as np

from tests.support.reference import hf_model


def next_token_logits(model_dir, prompt_ids: list[int], generated: list[int]) -> np.ndarray:
    """(len(generated), vocab) float64: row i is the logits that chose ``generated[i]``, from one uncached
    transformers forward over the prompt and the generated tokens."""
    import torch

    ids = list(prompt_ids) + list(generated)
    with torch.inference_mode():
        logits = hf_model(str(model_dir))(torch.tensor([ids])).logits[0]
    n = len(prompt_ids)
    return logits[n - 1 : n - 1 + len(generated)].double().numpy()


def mass_before(logits: np.ndarray, token: int, temperature: float, tie: float = 1e-6) -> float:
    """The probability mass of the tokens more likely than ``token`` (at ``temperature``). Top-p keeps a token
    exactly when this is below ``top_p``: the smallest set of most likely tokens whose mass reaches ``top_p``.
    Tokens within ``tie`` of ``token``'s probability count as equally likely (their order is float noise)."""
    z = logits / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    return float(p[p > p[token] + tie].sum())


def outside_nucleus(logits: np.ndarray, tokens: list[int], temperature: float, top_p: float,
                    tol: float = 1e-4) -> list[tuple[int, int, float]]:
    """``(step, token, mass before it)`` for every token that a top-p sampler could not have drawn."""
    assert len(tokens) == len(logits) > 0
    out = []
    for i, tok in enumerate(tokens):
        before = mass_before(logits[i], tok, temperature)
        if before >= top_p + tol:
            out.append((i, tok, round(before, 4)))
    return out


def nucleus_size(logits: np.ndarray, temperature: float, top_p: float) -> int:
    z = logits / temperature
    p = np.sort(np.exp(z - z.max()))[::-1]
    p /= p.sum()
    return int(((np.cumsum(p) - p) < top_p).sum())
