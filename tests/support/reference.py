"""Reference figures for the conformance tests: transformers' own forward pass + the numpy SAE encoder."""

from __future__ import annotations

import functools

import numpy as np

from neuroscope import registry
from neuroscope.protocol import ModelSpec
from neuroscope.sae import encode_reference, load_npz


@functools.lru_cache(maxsize=4)
def hf_model(model_dir: str, dtype: str = "float32"):
    """transformers' own Gemma-2 (the reference), loaded the way the installed release spells it."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # 4.56 renamed torch_dtype to dtype
    m = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", **{key: getattr(torch, dtype)})
    return m.eval()


def residuals(model_dir, ids: list[int], layer: int) -> np.ndarray:
    """Output of block ``layer`` at every position, from one uncached forward over ``ids``."""
    import torch

    with torch.inference_mode():
        out = hf_model(str(model_dir))(torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0].float().numpy()


def load_backend(name: str, fx, *, top_k: int = 8, norm: str = "none"):
    backend = registry.resolve(name)()
    sae = load_npz(fx.sae_path)
    info = backend.load(ModelSpec(str(fx.model_dir)), sae, fx.sae_layer, top_k=top_k, sae_input_norm=norm)
    return backend, info, sae


def assert_topk_matches(step, acts: np.ndarray, k: int, tol: float = 1e-4) -> None:
    """The step's features are a correct top-k of ``acts`` (ties aside) with the right values and L0."""
    ids, vals = step.feature_ids, step.feature_values
    fired = acts[acts > 0]
    assert len(ids) == min(k, fired.size), (len(ids), k, fired.size)
    np.testing.assert_allclose(vals, acts[ids], rtol=tol, atol=tol)
    assert np.all(np.diff(vals) <= tol), "features must come strongest first"
    if len(ids):
        kth = np.sort(acts)[::-1][len(ids) - 1]
        assert vals.min() >= kth - tol * max(1.0, abs(kth))
    assert step.l0 == int((acts > 0).sum())


def reference_acts(sae, resid: np.ndarray, norm: str = "none") -> np.ndarray:
    return encode_reference(sae, resid, norm)
