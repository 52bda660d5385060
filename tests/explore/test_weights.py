"""Reading two tensors alone from a checkpoint's safetensors: sharded (with the index) or not, F32 / F16 / BF16,
and clear errors for a missing tensor or a broken file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from neuroscope.explore import weights


def _write(d, shards):
    d.mkdir()
    index = {}
    for name, tensors in shards.items():
        save_file(tensors, str(d / name))
        index.update({k: name for k in tensors})
    return index


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sharded_checkpoint(tmp_path, dtype):
    emb = torch.randn(50, 8).to(dtype)
    norm = torch.randn(8).to(dtype)
    index = _write(tmp_path / "m", {"model-00001-of-00002.safetensors": {"model.embed_tokens.weight": emb},
                                    "model-00002-of-00002.safetensors": {"model.norm.weight": norm,
                                                                         "other": torch.zeros(3)}})
    (tmp_path / "m" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    for name, want in (("model.embed_tokens.weight", emb), ("model.norm.weight", norm)):
        arr, bf16 = weights.tensor(tmp_path / "m", name)
        assert bf16 == (dtype == torch.bfloat16)
        np.testing.assert_array_equal(weights.as_float32(arr, bf16), want.float().numpy())


def test_errors(tmp_path):
    _write(tmp_path / "m", {"model.safetensors": {"model.norm.weight": torch.zeros(4)}})
    with pytest.raises(weights.WeightsError, match="no tensor model.embed_tokens.weight"):
        weights.tensor(tmp_path / "m", "model.embed_tokens.weight")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x01\x00")
    with pytest.raises(weights.WeightsError, match="not a safetensors file"):
        weights.tensor(tmp_path / "m", "model.norm.weight")
    (tmp_path / "m" / "model.safetensors").write_bytes((5).to_bytes(8, "little") + b"{oops")
    with pytest.raises(weights.WeightsError, match="unreadable safetensors header"):
        weights.tensor(tmp_path / "m", "model.norm.weight")


def test_effects_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        weights.effects(tmp_path, np.zeros((4, 8), np.float32), 4)
