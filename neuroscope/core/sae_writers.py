"""Write an :class:`SAEWeights` in each format Neuroscope reads, so that tests, the demo and benchmarks can build
SAEs of every format offline (``params.npz`` is :func:`neuroscope.core.sae.save_npz`)."""

from __future__ import annotations

import json
from pathlib import Path

from neuroscope.core import safetensors_np
from neuroscope.core.sae import SAEWeights, save_npz
from neuroscope.core.sae_formats import DIR_FILES, GEMMA_SCOPE, GEMMA_SCOPE_2, NPZ, SAELENS

SAELENS_ARCHITECTURES = {"jumprelu": "jumprelu", "relu": "standard", "topk": "topk"}


def write_gemma_scope_2(directory: str | Path, sae: SAEWeights, *, layer: int, model_name: str = "google/gemma-3-1b-pt",
                        l0: int = 20, extra_config: dict | None = None, extra_tensors: dict | None = None) -> Path:
    """``params.safetensors`` + ``config.json`` of a JumpReLU residual SAE at block ``layer``'s output.
    ``extra_config`` / ``extra_tensors`` override or add fields (to build the files Neuroscope must refuse)."""
    if sae.architecture != "jumprelu" or sae.apply_b_dec_to_input or sae.input_scale is not None:
        raise ValueError("Gemma Scope 2 SAEs are plain JumpReLU (no b_dec on the input, no input scale)")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    weights, config = DIR_FILES[GEMMA_SCOPE_2]
    tensors = {"w_enc": sae.W_enc, "w_dec": sae.W_dec, "b_enc": sae.b_enc, "b_dec": sae.b_dec,
               "threshold": sae.threshold, **(extra_tensors or {})}
    safetensors_np.save(d / weights, tensors)
    hook = f"model.layers.{layer}.output"
    cfg = {"hf_hook_point_in": hook, "hf_hook_point_out": hook, "width": sae.d_sae, "model_name": model_name,
           "architecture": "jump_relu", "l0": l0, "affine_connection": False, "type": "sae", **(extra_config or {})}
    (d / config).write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return d


def write_saelens(directory: str | Path, sae: SAEWeights, *, layer: int, model_name: str = "tiny-gemma",
                  k_in_kwargs: bool = False, extra_config: dict | None = None) -> Path:
    """``sae_weights.safetensors`` + ``cfg.json`` of ``sae`` (its architecture, k, apply_b_dec_to_input and input
    scale) at ``blocks.<layer>.hook_resid_post``, in SAELens' flat layout; ``k_in_kwargs`` writes a topk SAE's
    k as ``activation_fn_kwargs.k`` (older SAELens) instead of ``k``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    weights, config = DIR_FILES[SAELENS]
    tensors = {"W_enc": sae.W_enc, "W_dec": sae.W_dec, "b_enc": sae.b_enc, "b_dec": sae.b_dec}
    if sae.architecture == "jumprelu":
        tensors["threshold"] = sae.threshold
    safetensors_np.save(d / weights, tensors)
    cfg: dict = {"architecture": SAELENS_ARCHITECTURES[sae.architecture], "d_in": sae.d_model, "d_sae": sae.d_sae,
                 "dtype": "float32", "device": "cpu", "model_name": model_name,
                 "hook_name": f"blocks.{layer}.hook_resid_post", "hook_layer": layer, "hook_head_index": None,
                 "apply_b_dec_to_input": sae.apply_b_dec_to_input, "normalize_activations": "none"}
    if sae.architecture == "topk":
        if k_in_kwargs:
            cfg["activation_fn_kwargs"] = {"k": sae.k}
        else:
            cfg["k"] = sae.k
    if sae.input_scale is not None:
        cfg["normalize_activations"] = "expected_average_only_in"
        cfg["norm_scaling_factor"] = sae.input_scale
    cfg.update(extra_config or {})
    (d / config).write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return d


def write_sae(directory: str | Path, sae: SAEWeights, fmt: str, *, layer: int) -> Path:
    """``sae`` in format ``fmt`` under ``directory``; returns what ``--sae-local-path`` takes."""
    if fmt == GEMMA_SCOPE:
        Path(directory).mkdir(parents=True, exist_ok=True)
        save_npz(Path(directory) / NPZ, sae)
        return Path(directory) / NPZ
    if fmt == GEMMA_SCOPE_2:
        return write_gemma_scope_2(directory, sae, layer=layer)
    if fmt == SAELENS:
        return write_saelens(directory, sae, layer=layer)
    raise ValueError(f"unknown SAE format {fmt!r}")
