"""SAE weights: the Gemma Scope ``params.npz`` loader, validation and the numpy reference encoders.

``params.npz`` keys: ``W_enc [d_model, d_sae]``, ``b_enc [d_sae]``, ``threshold [d_sae]``,
``W_dec [d_sae, d_model]``, ``b_dec [d_model]``. The other formats (Gemma Scope 2, SAELens) are read by
``neuroscope/core/sae_formats.py`` into the same :class:`SAEWeights`.

Every architecture encodes ``x' = x * input_scale - b_dec * apply_b_dec_to_input`` (after the optional RMS
input norm), then ``pre = x' @ W_enc + b_enc`` and:

- ``jumprelu``: ``relu(pre) * (pre > threshold)`` (Gemma Scope's reference code and SAELens: without the relu a
  negative threshold would let negative pre-activations through);
- ``relu`` (SAELens ``standard``): ``relu(pre)``; its ``threshold`` is all zeros, so it is also JumpReLU's rule;
- ``topk``: the ``k`` largest pre-activations, then ``relu``; every other feature is 0 (a feature's activation
  depends on all the others', so steering reads it from the full encode).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REQUIRED_KEYS = ("W_enc", "b_enc", "threshold", "W_dec", "b_dec")
ARCHITECTURES = ("jumprelu", "relu", "topk")
_FLOAT_KINDS = ("f",)
RMS_EPS = 1e-6


class SAEError(ValueError):
    """The SAE file is missing, malformed or does not fit the model. The message is user-facing."""


@dataclass(frozen=True)
class SAEWeights:
    W_enc: np.ndarray  # (d_model, d_sae) float32
    b_enc: np.ndarray  # (d_sae,)
    threshold: np.ndarray  # (d_sae,)
    W_dec: np.ndarray  # (d_sae, d_model)
    b_dec: np.ndarray  # (d_model,)
    source: str = ""
    architecture: str = "jumprelu"  # jumprelu | relu | topk
    k: int | None = None  # topk: features kept per token
    apply_b_dec_to_input: bool = False  # encode x - b_dec
    input_scale: float | None = None  # multiply the input by this before encoding (SAELens expected_average_only_in)
    layer: int | None = None  # the block whose output the SAE's own config names; None: it names none (npz)
    format: str = "gemma-scope"  # gemma-scope (params.npz) | gemma-scope-2 | saelens

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise SAEError(f"unknown SAE architecture {self.architecture!r} (known: {', '.join(ARCHITECTURES)})")
        if self.architecture == "topk" and (self.k is None or not 1 <= self.k <= self.d_sae):
            raise SAEError(f"a topk SAE needs k between 1 and d_sae={self.d_sae}, got {self.k}")
        if self.input_scale is not None and not (np.isfinite(self.input_scale) and self.input_scale > 0):
            raise SAEError(f"the SAE's input scale must be a positive number, got {self.input_scale}")

    @property
    def kind(self) -> str:
        """``jumprelu``, ``relu`` or ``topk (k=32)``: what the start-up panel shows."""
        return f"topk (k={self.k})" if self.architecture == "topk" else self.architecture

    @property
    def d_model(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def check_model(self, *, d_model: int, n_layers: int, layer: int) -> None:
        """Fail clearly when the SAE does not fit the model or the layer does not exist."""
        if self.d_model != d_model:
            raise SAEError(
                f"SAE {self.source or ''} expects d_model={self.d_model} but the model's hidden size is {d_model}"
            )
        if not 0 <= layer < n_layers:
            raise SAEError(f"SAE layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1})")


def load_npz(path: str | os.PathLike[str], *, dtype: np.dtype | type = np.float32) -> SAEWeights:
    """Load and validate a Gemma Scope style ``params.npz`` (never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise SAEError(f"SAE file not found: {path}")
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise SAEError(f"SAE file {path} is not a readable .npz archive: {exc}") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise SAEError(f"SAE file {path} is a single array, not a .npz archive of W_enc, b_enc, threshold, W_dec, b_dec")
    with npz:
        missing = [k for k in REQUIRED_KEYS if k not in npz.files]
        if missing:
            raise SAEError(
                f"SAE file {path} lacks {', '.join(missing)} (has: {', '.join(sorted(npz.files)) or 'nothing'})"
            )
        try:
            arrays = {k: npz[k] for k in REQUIRED_KEYS}
        except ValueError as exc:  # object arrays need pickle, which we refuse
            raise SAEError(f"SAE file {path} holds a non-numeric array: {exc}") from exc
    return from_arrays(arrays, source=str(path), dtype=dtype)


def npz_header(path: str | os.PathLike[str]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an ``.npz``, read from the array headers only (no data)."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if not name.endswith(".npy"):
                continue
            with zf.open(name) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            out[name[: -len(".npy")]] = (tuple(int(n) for n in shape), dtype)
    return out


def read_d_sae(path: str | os.PathLike[str]) -> int:
    """The SAE's width from the header of ``threshold`` in a ``params.npz``, without reading any weights."""
    try:
        header = npz_header(path)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SAEError(f"cannot read the SAE's width from {path}: {exc}") from None
    if "threshold" not in header:
        raise SAEError(f"cannot read the SAE's width from {path}: it holds no threshold array")
    shape = header["threshold"][0]
    if len(shape) != 1 or shape[0] < 1:
        raise SAEError(f"SAE file {path}: threshold has shape {shape}, expected (d_sae,)")
    return int(shape[0])


def from_arrays(arrays: dict[str, np.ndarray], *, source: str = "", dtype=np.float32, **meta) -> SAEWeights:
    """Validate dtypes and shapes; ``meta``: the other :class:`SAEWeights` fields. Without a ``threshold`` (relu,
    topk) it is all zeros."""
    if "threshold" not in arrays and "W_enc" in arrays and getattr(arrays["W_enc"], "ndim", 0) == 2:
        arrays = {**arrays, "threshold": np.zeros(arrays["W_enc"].shape[1], dtype=np.float32)}
    for k in REQUIRED_KEYS:
        a = arrays[k]
        if a.dtype.kind not in _FLOAT_KINDS and a.dtype.name != "bfloat16":
            raise SAEError(f"SAE array {k} has dtype {a.dtype}; expected a floating-point type")
    W_enc, b_enc, thr, W_dec, b_dec = (arrays[k] for k in REQUIRED_KEYS)
    if W_enc.ndim != 2:
        raise SAEError(f"SAE W_enc must be 2-D [d_model, d_sae], got shape {W_enc.shape}")
    d_model, d_sae = W_enc.shape
    expected = {
        "b_enc": (d_sae,),
        "threshold": (d_sae,),
        "W_dec": (d_sae, d_model),
        "b_dec": (d_model,),
    }
    for k, shape in expected.items():
        if arrays[k].shape != shape:
            raise SAEError(
                f"SAE {k} has shape {arrays[k].shape} but W_enc {W_enc.shape} implies {shape}"
                + (f" ({source})" if source else "")
            )
    cast = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
    return SAEWeights(cast(W_enc), cast(b_enc), cast(thr), cast(W_dec), cast(b_dec), source=source, **meta)


def save_npz(path: str | os.PathLike[str], sae: SAEWeights) -> None:
    """Gemma Scope's ``params.npz``: JumpReLU only, with nothing else to say (no input scale, no b_dec on the input)."""
    if sae.architecture != "jumprelu" or sae.apply_b_dec_to_input or sae.input_scale is not None:
        raise ValueError(f"a params.npz holds a plain JumpReLU SAE; this one is {sae.kind}"
                         + (" with b_dec subtracted from its input" if sae.apply_b_dec_to_input else "")
                         + (" with an input scale" if sae.input_scale is not None else ""))
    np.savez(path, W_enc=sae.W_enc, b_enc=sae.b_enc, threshold=sae.threshold, W_dec=sae.W_dec, b_dec=sae.b_dec)


INPUT_NORMS = ("none", "rms")
SAE_DTYPES = ("float32", "bfloat16")


def check_encoder_options(input_norm: str, dtype: str) -> None:
    """The options every backend's encoder takes; a bad one is a ValueError naming the choices."""
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"unknown SAE input norm {input_norm!r} (choose {' or '.join(INPUT_NORMS)})")
    if dtype not in SAE_DTYPES:
        raise ValueError(f"unknown SAE dtype {dtype!r} (choose {' or '.join(SAE_DTYPES)})")


# ---------------------------------------------------------------------------------------------- reference
def normalize_input(x: np.ndarray, norm: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if norm == "none":
        return x
    if norm == "rms":
        rms = np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS)
        return x / rms
    raise ValueError(f"unknown SAE input norm {norm!r} (choose none or rms)")


def prepare_input(sae: SAEWeights, x: np.ndarray, norm: str = "none") -> np.ndarray:
    """What the encoder multiplies: the input norm, the SAE's input scale, minus ``b_dec`` when it asks."""
    x = normalize_input(x, norm)
    if sae.input_scale is not None:
        x = x * np.float32(sae.input_scale)
    if sae.apply_b_dec_to_input:
        x = x - sae.b_dec.astype(np.float32, copy=False)
    return x


def encode_reference(sae: SAEWeights, x: np.ndarray, norm: str = "none") -> np.ndarray:
    """Activations in float32 of the SAE's architecture (the numpy reference every backend is tested against)."""
    x = prepare_input(sae, x, norm)
    f32 = lambda a: a.astype(np.float32, copy=False)  # noqa: E731 - no per-call copy of float32 weights
    pre = x @ f32(sae.W_enc) + f32(sae.b_enc)
    if sae.architecture == "topk":
        k = int(sae.k)  # type: ignore[arg-type]
        ids = np.argpartition(-pre, k - 1, axis=-1)[..., :k]
        out = np.zeros_like(pre)
        np.put_along_axis(out, ids, np.maximum(np.take_along_axis(pre, ids, axis=-1), np.float32(0)), axis=-1)
        return out.astype(np.float32, copy=False)
    if sae.architecture == "relu":
        return np.maximum(pre, np.float32(0)).astype(np.float32, copy=False)
    return np.where(pre > f32(sae.threshold), np.maximum(pre, np.float32(0)), np.float32(0)).astype(np.float32, copy=False)


def topk_reference(acts: np.ndarray, k: int, scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ids (strongest first) and activations of the k best features of a 1-D activation vector."""
    s = acts if scores is None else scores
    k = min(k, s.shape[-1])
    ids = np.argsort(-s, kind="stable")[:k]
    return ids.astype(np.int64), acts[ids].astype(np.float32)
