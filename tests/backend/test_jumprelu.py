"""Every backend's SAE encoder is the standard JumpReLU, relu(pre) * (pre > threshold) (strictly: a
pre-activation equal to its threshold gives 0), even where a threshold is negative (a pre-activation between a negative threshold and zero must give 0, not a negative
activation that could win a top-k slot or count in L0)."""

from __future__ import annotations

import numpy as np
import pytest

from neuroscope.core.sae import SAEWeights

# pre-activations of the one input below, per feature, and the thresholds they meet
# (the last feature sits exactly at its threshold: JumpReLU's test is strict, so it does not fire)
PRE = np.array([-0.5, -1.5, 0.25, 2.0, -0.01, 0.75, 0.5], dtype=np.float32)
THRESHOLD = np.array([-1.0, -1.0, -1.0, 0.5, -0.5, 1.0, 0.5], dtype=np.float32)
EXPECTED = np.array([0.0, 0.0, 0.25, 2.0, 0.0, 0.0, 0.0], dtype=np.float32)  # computed by hand


def _sae() -> SAEWeights:
    d_model, d_sae = 2, PRE.size
    return SAEWeights(
        np.zeros((d_model, d_sae), np.float32), PRE.copy(), THRESHOLD.copy(),
        np.zeros((d_sae, d_model), np.float32), np.zeros(d_model, np.float32), source="negative-thresholds",
    )


def _torch():
    torch = pytest.importorskip("torch")
    from backends.torch_sae import TorchSAE

    enc = TorchSAE(_sae(), torch.device("cpu"), top_k=PRE.size)
    x = torch.ones(1, 2)
    return enc.encode(x).numpy()[0], enc.topk(x).numpy()[0]


def _mlx():
    pytest.importorskip("mlx.core", reason="mlx is not installed (Linux: pip install 'mlx[cpu]')")
    import mlx.core as mx

    from backends.mlx_sae import MLXSAE

    enc = MLXSAE(_sae(), top_k=PRE.size)
    x = mx.ones((1, 2))
    return np.array(enc.encode(x))[0], np.array(enc.topk(x))[0]


@pytest.mark.parametrize("encoder", [_torch, _mlx], ids=["torch", "mlx"])
def test_negative_thresholds_give_no_negative_activations(encoder):
    acts, packed = encoder()
    np.testing.assert_array_equal(acts, EXPECTED)
    k = PRE.size
    assert packed[0] == 2  # L0: only the two positive activations fired
    assert packed[1] == 0  # no mask, nothing filtered
    ids, vals = packed[2 : 2 + k].astype(int), packed[2 + k :]
    assert ids[:2].tolist() == [3, 2] and vals[:2].tolist() == [2.0, 0.25]
    assert (vals >= 0).all()
