"""Reference figures for the conformance tests: transformers' own forward pass + the numpy SAE encoder."""

from __future__ import annotations

import functools

import numpy as np

from neuroscope.core import registry
from neuroscope.core.protocol import ModelSpec
from neuroscope.core.sae import encode_reference, load_npz, prepare_input


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


def greedy_full_recompute(model_dir, prompt: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``prompt``, each the argmax of transformers' logits over the whole sequence so
    far, recomputed without any cache (transformers' cached ``generate`` is not the reference: 4.46's differs
    from its full recompute once the sequence is longer than the sliding window)."""
    import torch

    seq = list(prompt)
    model = hf_model(str(model_dir))
    with torch.inference_mode():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def load_backend(name: str, fx, *, top_k: int = 8, norm: str = "none"):
    """``name`` is a backend, or ``backend:engine`` (``torch-cpu:compiled``) for a torch backend's engine."""
    name, _, engine = name.partition(":")
    backend = registry.resolve(name)()
    if engine:
        backend.engine = engine
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


# ---------------------------------------------------------------------------------------------- steering
def steer_rows(sae, features, resid: np.ndarray) -> np.ndarray:
    """The steering rule in plain numpy, written from the spec (not from the code under test): for each
    ``(index, mode, value)``, ``add`` adds ``value * W_dec[index]``; ``clamp`` adds ``(value - a) *
    W_dec[index]`` and ``ablate`` ``(0 - a) * W_dec[index]``, with ``a`` the feature's activation of the unsteered
    residual row by the SAE's architecture (the reference encoder: JumpReLU, ReLU, or TopK, where whether a
    feature is among the k depends on all of them). An SAE with an input scale reconstructs the scaled input, so
    its decoder rows are divided by the scale. Returns the steered rows (n, d_model) float32."""
    x = np.asarray(resid, dtype=np.float32)
    out = x.astype(np.float64)
    xin = prepare_input(sae, x).astype(np.float64)  # input scale, minus b_dec when the SAE asks
    topk = encode_reference(sae, x) if sae.architecture == "topk" else None
    unit = 1.0 / (sae.input_scale or 1.0)
    for index, mode, value in features:
        if topk is not None:
            a = topk[:, index].astype(np.float64)
        else:  # JumpReLU (a ReLU SAE's thresholds are zeros): the feature's own column, in float64
            pre = xin @ sae.W_enc[:, index].astype(np.float64) + float(sae.b_enc[index])
            a = np.where(pre > float(sae.threshold[index]), np.maximum(pre, 0.0), 0.0)
        target = 0.0 if mode == "ablate" else float(value)
        coef = np.full(len(x), target) if mode == "add" else target - a
        out += coef[:, None] * (sae.W_dec[index].astype(np.float64) * unit)[None, :]
    return out.astype(np.float32)


def steered_greedy(model_dir, sae, layer: int, prompt_ids: list[int], features, positions: str, n: int,
                   dtype: str = "float32"):
    """Greedy decoding by transformers' Gemma-2, the whole sequence recomputed for every token (no cache),
    with a forward hook on ``model.model.layers[layer]`` that steers its output by :func:`steer_rows` at every
    position (``positions="all"``) or at positions >= the prompt length (``"generated"``).

    Returns (the n generated token ids, the steered block output at every position of prompt + tokens)."""
    import torch

    model = hf_model(str(model_dir), dtype)
    start = 0 if positions == "all" else len(prompt_ids)
    kept: dict[str, np.ndarray] = {}

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output  # transformers < 5 returns a tuple
        rows = h[0].detach().float().numpy()
        steered = rows.copy()
        steered[start:] = steer_rows(sae, features, rows[start:])
        kept["h"] = steered
        new = torch.from_numpy(steered)[None].to(h.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = model.model.layers[layer].register_forward_hook(hook)
    try:
        seq = list(prompt_ids)
        with torch.inference_mode():
            for _ in range(n):
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
            model(torch.tensor([seq]))  # the steered residual at every position, the last token's included
    finally:
        handle.remove()
    return seq[len(prompt_ids):], kept["h"]
