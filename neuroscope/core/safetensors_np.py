"""Read ``.safetensors`` files into numpy (float32 / float16 / bfloat16 / float64), with one-line errors.

The format is an 8-byte little-endian header length, a JSON header ``{name: {dtype, shape, data_offsets}}`` and
the raw tensors. numpy has no bfloat16, so bf16 tensors are widened to float32 exactly (their bits are the top
half of a float32), which is why this reads the (simple) layout itself rather than through ``safetensors.numpy``
(writing goes through the library). Reading the header alone gives every tensor's shape without reading any weights.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"), "BF16": np.dtype("<u2")}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """The file is not a readable safetensors file; the message names the file and what is wrong."""


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, dict], int]:
    """The tensors' entries (``dtype``, ``shape``, ``data_offsets``) and where the data starts."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{path} is not a safetensors file: it is only {len(head)} bytes long")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER:
                raise SafetensorsError(f"{path} is not a safetensors file: its header claims {n} bytes")
            raw = f.read(n)
    except OSError as exc:
        raise SafetensorsError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) < n:
        raise SafetensorsError(f"{path} is truncated: its header claims {n} bytes, the file holds {len(raw)}")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SafetensorsError(f"{path} has an unreadable safetensors header: it is not JSON") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path} is not a safetensors file: its header is not a JSON object")
    header.pop("__metadata__", None)
    for name, entry in header.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("shape"), list) and
                isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2):
            raise SafetensorsError(f"{path}: the header entry of tensor {name!r} is malformed")
    return header, 8 + n


def shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the header only."""
    header, _ = read_header(path)
    return {name: tuple(int(d) for d in e["shape"]) for name, e in header.items()}


def load(path: str | os.PathLike[str], names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Tensors ``names`` (default: all) as numpy arrays; bf16 becomes float32."""
    path = Path(path)
    header, start = read_header(path)
    size = path.stat().st_size
    out = {}
    for name in names if names is not None else list(header):
        entry = header[name]
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {entry['dtype']}; expected a floating-point "
                                   "type (F32, F16, BF16, F64)")
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dtype.itemsize or start + end > size:
            raise SafetensorsError(f"{path}: tensor {name!r} of shape {shape} does not fit its {end - begin} bytes "
                                   "(a truncated or malformed file)")
        a = np.fromfile(path, dtype=dtype, count=count, offset=start + begin).reshape(shape)
        if entry["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a
    return out


def save(path: str | os.PathLike[str], tensors: dict[str, np.ndarray]) -> None:
    """Write float32 tensors with the safetensors library's own writer."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path))
