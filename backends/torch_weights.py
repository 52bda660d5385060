"""Reading a checkpoint's safetensors for the torch model families: only the tensors a model uses, renamed to
its parameter names (a multimodal checkpoint's language model without its vision tower)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch


def read_weights(path: Path, name: Callable[[str], str | None], dtype: torch.dtype,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors of ``path``'s ``model*.safetensors`` that ``name`` keeps, renamed by it, in ``dtype``: the
    others (a multimodal checkpoint's vision tower) are never read."""
    from safetensors import safe_open

    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} holds no model*.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt", device=str(device)) as st:
            for key in st.keys():
                ours = name(key)
                if ours is not None:
                    weights[ours] = st.get_tensor(key).to(dtype)
    return weights
