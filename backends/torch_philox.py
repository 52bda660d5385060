"""Philox4x32-10, the counter-based RNG of Random123 (Salmon et al., SC'11), in plain torch integer ops.

A draw is a pure function of (key, counter): the key is the request's seed, the counter the position of the
token being drawn. So a seeded request draws the same numbers whether its step runs eagerly or compiled (no
generator object whose state would live outside the graph), and a step needs no RNG state at all: the position
it already carries is the counter. 32-bit words live in int64 tensors; the 32 x 32-bit multiply is split into
16-bit halves so that nothing overflows int64 (signed overflow is undefined in the C++ and Triton that
inductor generates).
"""

from __future__ import annotations

import torch

_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_MASK = 0xFFFFFFFF
ROUNDS = 10


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of ``a * b`` for a 32-bit constant ``a`` and 32-bit words ``b`` (int64)."""
    p1 = (a >> 16) * b  # < 2**48
    p0 = (a & 0xFFFF) * b  # < 2**48
    s = ((p1 & 0xFFFF) << 16) + p0  # < 2**49
    return (p1 >> 16) + (s >> 32), s & _MASK


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of four 32-bit counter words and two key words (int64 tensors of one shape)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(ROUNDS):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
    return c0, c1, c2, c3


def seed_key(seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 63-bit seed (int64 tensor) -> the two 32-bit key words."""
    return seed & _MASK, (seed >> 32) & _MASK


def uniform(seed: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """One float32 in [0, 1) per element of ``counter`` (int64, e.g. a position) under ``seed`` (int64, () or
    broadcastable): the top 24 bits of Philox's first output word, exact in float32."""
    counter = counter.to(torch.int64)
    zero = torch.zeros_like(counter)
    k0, k1 = seed_key(seed.to(torch.int64))
    x = philox4x32((counter & _MASK, (counter >> 32) & _MASK, zero, zero), (k0 + zero, k1 + zero))[0]
    return (x >> 8).to(torch.float32) * (1.0 / (1 << 24))
