"""Which Neuronpedia model / source ids hold the explanations of a served SAE (``neuroscope/data/neuronpedia.json``).

The registry is data: an entry names the models and the SAE repo it covers, a regular expression over the SAE file
or directory whose named groups fill the source id's placeholders (``layer_20/width_16k/average_l0_71/params.npz`` →
``20-gemmascope-res-16k``; ``resid_post/layer_17_width_65k_l0_medium`` → ``17-gemmascope-2-res-65k``), and the
SAE's width (a number, or one per value of the ``width`` group). An SAE it does not know has no Neuronpedia source.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from neuroscope.store import paths


@dataclass(frozen=True, slots=True)
class NeuronpediaIds:
    model_id: str  # Neuronpedia's model id, e.g. gemma-2-2b
    source_id: str  # its source (SAE) id, e.g. 20-gemmascope-res-16k
    d_sae: int

    def __str__(self) -> str:
        return f"{self.model_id}/{self.source_id}"


REGISTRY_ENV = "NEURONPEDIA_REGISTRY"  # a JSON file of more entries (same layout), searched first


class RegistryError(ValueError):
    """The file named by NEURONPEDIA_REGISTRY cannot be read. The message is user-facing."""


@lru_cache(maxsize=1)
def _builtin() -> tuple[dict, ...]:
    text = resources.files("neuroscope.data").joinpath("neuronpedia.json").read_text(encoding="utf-8")
    return tuple(json.loads(text)["entries"])


def entries() -> tuple[dict, ...]:
    """The entries of ``$NEURONPEDIA_REGISTRY`` (when set), then the built-in ones."""
    extra = os.environ.get(REGISTRY_ENV)
    if not extra:
        return _builtin()
    try:
        data = json.loads(Path(extra).expanduser().read_text(encoding="utf-8"))
        more = data["entries"]
        if not isinstance(more, list) or not all(isinstance(e, dict) for e in more):
            raise TypeError("entries must be a list of objects")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"{REGISTRY_ENV}={extra}: not a Neuronpedia registry file ({exc})") from None
    return (*more, *_builtin())


def lookup(ns: paths.Namespace) -> NeuronpediaIds | None:
    """The Neuronpedia ids of the SAE of ``ns``, or None when the registry does not know it (a local SAE file, a
    local model directory, another SAE)."""
    if ns.is_local:
        return None
    for entry in entries():
        if ns.model not in entry.get("models", ()) or ns.sae != entry.get("sae"):
            continue
        m = re.fullmatch(entry["sae_path"], ns.sae_path or "")
        if m is None:
            continue
        groups = m.groupdict()
        low, high = entry.get("layers", (0, 10**6))
        if "layer" in groups and not low <= int(groups["layer"]) <= high:
            continue
        d_sae = entry["d_sae"]
        if isinstance(d_sae, dict):  # one width per value of the width group (Gemma Scope 2: 16k, 65k, …)
            d_sae = d_sae.get(groups.get("width"))
            if d_sae is None:
                continue
        return NeuronpediaIds(entry["model_id"], entry["source"].format(**groups), int(d_sae))
    return None
