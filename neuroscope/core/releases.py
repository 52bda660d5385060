"""The known SAE releases (``neuroscope/data/gemma_scope.json``): which SAEs exist for which model, where each
lives in its repo, and which one a model is served with when no SAE is named.

A release is one family of SAEs in one repo (Gemma Scope's ``google/gemma-scope-2b-pt-res``; Gemma Scope 2's
``resid_post`` and ``resid_post_all`` folders of ``google/gemma-scope-2-1b-it``…). Its ``path`` is a template
filled from one SAE's layer, width and L0 variant; at most one release per model carries a ``default``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

REGISTRY_FORMAT = "neuroscope-sae-registry/2"


@lru_cache(maxsize=1)
def registry() -> dict:
    """The known SAE releases (package data: ``neuroscope/data/gemma_scope.json``)."""
    data = json.loads(resources.files("neuroscope.data").joinpath("gemma_scope.json").read_text(encoding="utf-8"))
    if data.get("format") != REGISTRY_FORMAT:
        raise ValueError(f"unknown SAE registry format {data.get('format')!r}")
    return data


def releases_for(model: str) -> list[dict]:
    """The registry's releases made for ``model`` (a hub id), the one holding its default first."""
    found = [r for r in registry()["releases"] if model in r["models"]]
    return sorted(found, key=lambda r: "default" not in r)


def release_path(release: dict, layer: int, width: str, l0: int | str) -> str:
    """The SAE's file (Gemma Scope: ``…/params.npz``) or directory (Gemma Scope 2) in the release's repo."""
    return release["path"].format(layer=layer, width=width, l0=l0)


def known_models() -> list[str]:
    """Every model some release is made for, in registry order."""
    return list(dict.fromkeys(m for r in registry()["releases"] for m in r["models"]))


@dataclass(frozen=True)
class KnownSae:
    """One SAE of the registry: its repo and path in it, the layer it reads, and what it is."""

    release: dict
    layer: int
    width: str
    l0: int | str

    @property
    def repo(self) -> str:
        return self.release["repo"]

    @property
    def path(self) -> str:
        return release_path(self.release, self.layer, self.width, self.l0)

    @property
    def d_sae(self) -> int:
        return int(self.release["widths"][self.width])


def default_release(model: str) -> dict | None:
    """The release holding ``model``'s default SAE, or None when the registry has none for it."""
    for release in releases_for(model):
        if "default" in release:
            return release
    return None


def default_sae(model: str) -> KnownSae | None:
    """The SAE ``model`` is served with when none is named, or None when the registry knows no default for it."""
    release = default_release(model)
    if release is None:
        return None
    d = release["default"]
    return KnownSae(release, int(d["layer"]), d["width"], d["l0"])


def default_layers(model: str) -> list[int]:
    """The layers at which the default release has an SAE of the default's width and L0 kind."""
    release = default_release(model)
    if release is None:
        return []
    return sorted({s["layer"] for s in release["saes"] if _variant(release, s) is not None})


def default_sae_at(model: str, layer: int) -> KnownSae | None:
    """``model``'s default SAE moved to ``layer``: the same release and width, at ``layer`` (Gemma Scope: that
    layer's canonical L0; Gemma Scope 2: the same L0 variant). None when the release has no such SAE."""
    release = default_release(model)
    if release is None:
        return None
    for sae in release["saes"]:
        if sae["layer"] == layer and (l0 := _variant(release, sae)) is not None:
            return KnownSae(release, layer, sae["width"], l0)
    return None


def saes_at(model: str, layer: int) -> list[KnownSae]:
    """Every known SAE for ``model`` at ``layer`` (each L0 variant), the default's release first."""
    return [KnownSae(r, layer, sae["width"], l0) for r in releases_for(model) for sae in r["saes"]
            if sae["layer"] == layer for l0 in sae["l0"]]


def _variant(release: dict, sae: dict) -> int | str | None:
    """The L0 variant of ``sae`` that matches the release's default: its canonical L0 when the default's L0 is
    a number (Gemma Scope's per-layer average L0s), the same named variant otherwise."""
    d = release["default"]
    if sae["width"] != d["width"]:
        return None
    if sae["layer"] == d["layer"]:
        return d["l0"]
    if isinstance(d["l0"], str):
        return d["l0"] if d["l0"] in sae["l0"] else None
    return sae.get("canonical_l0")


def find(repo: str, path: str) -> KnownSae | None:
    """The registry's entry for the SAE at ``path`` in ``repo`` (a directory, or the file of a one-file SAE), if
    any."""
    path = path.strip("/")
    for release in registry()["releases"]:
        if release["repo"] != repo:
            continue
        for sae in release["saes"]:
            for l0 in sae["l0"]:
                known = release_path(release, sae["layer"], sae["width"], l0)
                if path == known or path.startswith(known + "/") or any(known == f"{path}/{f}" for f in
                                                                        release.get("files", ())):
                    return KnownSae(release, sae["layer"], sae["width"], l0)
    return None
