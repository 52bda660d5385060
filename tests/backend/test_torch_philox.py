"""The counter-based RNG of the torch sampler: Philox4x32-10 against Random123's known-answer vectors."""

from __future__ import annotations

import numpy as np
import torch

from backends.torch_philox import philox4x32, uniform

# Random123's kat_vectors: (counter, key, output) for philox4x32 with 10 rounds
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def test_philox_matches_the_known_answer_vectors():
    for counter, key, expected in KAT:
        words = philox4x32(tuple(torch.tensor([c]) for c in counter), tuple(torch.tensor([k]) for k in key))
        assert tuple(int(w) for w in words) == expected


def test_uniform_is_a_function_of_seed_and_position():
    pos = torch.arange(4096)
    a, b = uniform(torch.tensor(123), pos), uniform(torch.tensor(124), pos)
    assert torch.equal(a, uniform(torch.tensor(123), pos))
    assert not torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) < 1.0
    # roughly uniform: each decile holds about a tenth of 4096 draws
    hist = np.histogram(a.numpy(), bins=10, range=(0, 1))[0]
    assert hist.min() > 300 and hist.max() < 520
    # a large seed uses both key words
    big = torch.tensor(1 << 40)
    assert not torch.equal(uniform(big, pos), uniform(big + (1 << 33), pos))
