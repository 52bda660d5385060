"""The model families the MLX backend runs, chosen by the checkpoint config's ``model_type``: one module each,
read by ``mlx_lm.utils.load_model`` through :func:`model_classes`."""

from __future__ import annotations

import importlib

FAMILIES = {  # model_type -> the module with its Model and ModelArgs
    "gemma2": "backends.mlx_gemma2",
    "gemma3_text": "backends.mlx_gemma3",
    "gemma3": "backends.mlx_gemma3",  # multimodal Gemma-3, served as text (its language model only)
}


def model_classes(config: dict):
    """``get_model_classes`` for ``mlx_lm.utils.load_model``: Neuroscope's own module for the family."""
    name = config.get("model_type")
    if name not in FAMILIES:
        raise ValueError(f"unsupported model_type {name!r}: the mlx backend runs Gemma-2 (gemma2) and Gemma-3 "
                         "(gemma3_text, or gemma3 served as text)")
    module = importlib.import_module(FAMILIES[name])
    return module.Model, module.ModelArgs
