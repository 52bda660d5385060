"""The SAE registry as data (``neuroscope/data/gemma_scope.json``): every release well-formed, the facts it was
built from, and the per-model defaults ``serve`` falls back on."""

from __future__ import annotations

import pytest

from neuroscope.config import DEFAULT_LAYER, DEFAULT_MODEL, DEFAULT_SAE, DEFAULT_SAE_PATH
from neuroscope.core import releases

RELEASES = releases.registry()["releases"]
GEMMA3 = {  # size: (d_model, layers, the default's layer, the base model's hub id)
    "270m": (640, 18, 12, "google/gemma-3-270m"),
    "1b": (1152, 26, 17, "google/gemma-3-1b-pt"),
    "4b": (2560, 34, 22, "google/gemma-3-4b-pt"),
}


@pytest.mark.parametrize("release", RELEASES, ids=[r["id"] for r in RELEASES])
def test_every_release_is_well_formed(release):
    assert release["models"] and release["family"] in ("gemma2", "gemma3")
    assert release["d_model"] > 0 and release["n_layers"] > 0 and release["files"]
    seen = set()
    for sae in release["saes"]:
        assert 0 <= sae["layer"] < release["n_layers"]
        assert sae["width"] in release["widths"]
        assert sae["l0"] and len(set(sae["l0"])) == len(sae["l0"])
        assert sae.get("canonical_l0", sae["l0"][0]) in sae["l0"]
        assert set(sae.get("l0_values", {})) <= set(sae["l0"])
        for l0 in sae["l0"]:
            path = releases.release_path(release, sae["layer"], sae["width"], l0)
            assert path not in seen and "{" not in path
            seen.add(path)
    if "default" in release:
        d = release["default"]
        match = [s for s in release["saes"] if (s["layer"], s["width"]) == (d["layer"], d["width"])]
        assert len(match) == 1 and d["l0"] in match[0]["l0"]


def test_a_model_has_at_most_one_default_and_every_known_model_has_one():
    for model in releases.known_models():
        assert sum("default" in r for r in releases.releases_for(model)) == 1, model


def test_the_gemma_2_default_is_what_it_always_was():
    sae = releases.default_sae(DEFAULT_MODEL)
    assert (sae.repo, sae.path, sae.layer, sae.d_sae) == (DEFAULT_SAE, DEFAULT_SAE_PATH, DEFAULT_LAYER, 16384)
    assert releases.default_sae("google/gemma-2-2b").path == DEFAULT_SAE_PATH


@pytest.mark.parametrize("size", GEMMA3)
@pytest.mark.parametrize("kind", ["pt", "it"])
def test_gemma_scope_2_releases_for_gemma_3(size, kind):
    d_model, n_layers, default_layer, base = GEMMA3[size]
    model = base if kind == "pt" else f"google/gemma-3-{size}-it"
    found = {r["id"]: r for r in releases.releases_for(model)}
    assert set(found) == {f"gemma-scope-2-{size}-{kind}-res", f"gemma-scope-2-{size}-{kind}-res-all"}
    every, selected = found[f"gemma-scope-2-{size}-{kind}-res-all"], found[f"gemma-scope-2-{size}-{kind}-res"]
    for r in (every, selected):
        assert r["repo"] == f"google/gemma-scope-2-{size}-{kind}"
        assert (r["d_model"], r["n_layers"], r["family"]) == (d_model, n_layers, "gemma3")
        assert r["files"] == ["params.safetensors", "config.json"]
    assert {s["layer"] for s in every["saes"]} == set(range(n_layers))  # resid_post_all: every layer
    assert releases.release_path(every, 3, "16k", "small") == "resid_post_all/layer_3_width_16k_l0_small"
    assert {s["width"] for s in selected["saes"]} >= {"16k", "65k", "262k"}
    assert len({s["layer"] for s in selected["saes"]}) == 4
    sae = releases.default_sae(model)
    assert sae.release is selected and (sae.layer, sae.width, sae.l0) == (default_layer, "16k", "medium")
    assert sae.path == f"resid_post/layer_{default_layer}_width_16k_l0_medium"
    assert n_layers / 2 <= default_layer < n_layers - 2  # middle to late
    np_model = base.removeprefix("google/").removesuffix("-pt") + ("-it" if kind == "it" else "")
    assert selected["neuronpedia_model"] == np_model
    entry = next(s for s in selected["saes"] if (s["layer"], s["width"]) == (default_layer, "16k"))
    assert entry["neuronpedia"] == f"{default_layer}-gemmascope-2-res-16k" and entry["canonical_l0"] == "medium"


def test_the_default_at_another_layer_keeps_release_width_and_l0_kind():
    at12 = releases.default_sae_at(DEFAULT_MODEL, 12)
    assert (at12.repo, at12.path) == (DEFAULT_SAE, "layer_12/width_16k/average_l0_82/params.npz")  # canonical L0
    at13 = releases.default_sae_at("google/gemma-3-1b-it", 13)
    assert (at13.repo, at13.path) == ("google/gemma-scope-2-1b-it", "resid_post/layer_13_width_16k_l0_medium")
    assert releases.default_sae_at("google/gemma-3-1b-it", 20) is None  # resid_post has 7, 13, 17, 22
    assert releases.default_layers("google/gemma-3-1b-it") == [7, 13, 17, 22]
    assert releases.default_layers(DEFAULT_MODEL) == list(range(26))
    assert releases.default_sae("acme/unknown") is None and releases.default_sae_at("acme/unknown", 3) is None


def test_find_matches_a_directory_or_its_files():
    d = releases.find("google/gemma-scope-2-4b-it", "resid_post/layer_9_width_65k_l0_big/params.safetensors")
    assert (d.layer, d.width, d.l0, d.d_sae) == (9, "65k", "big", 65536)
    assert releases.find("google/gemma-scope-2-4b-it", "resid_post/layer_9_width_65k_l0_big/").path == \
        "resid_post/layer_9_width_65k_l0_big"
    g = releases.find(DEFAULT_SAE, "layer_20/width_16k/average_l0_71")
    assert g.path == DEFAULT_SAE_PATH
    assert releases.find(DEFAULT_SAE, "layer_20") is None
    assert releases.find("google/gemma-scope-2-4b-pt", "resid_post/layer_9_width_65k_l0_big") is not None
    assert releases.find("google/gemma-scope-2-4b-pt", "resid_post/layer_10_width_65k_l0_big") is None


def test_every_sae_at_a_layer():
    found = releases.saes_at("google/gemma-3-1b-it", 17)
    assert found[0].release["id"] == "gemma-scope-2-1b-it-res"  # the default's release first
    assert {k.path for k in found} >= {"resid_post/layer_17_width_1m_l0_big", "resid_post_all/layer_17_width_262k_l0_small"}
    assert len(found) == 4 * 3 + 2 * 2 and releases.saes_at("google/gemma-3-1b-it", 26) == []
