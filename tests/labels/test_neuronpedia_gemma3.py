"""Neuronpedia's ids for Gemma Scope 2 SAEs (``neuroscope/data/neuronpedia.json``): every SAE the SAE registry
says Neuronpedia hosts is found, as a directory or its params file; what it does not host is not; widths come per
width; and the labels of one model's SAE never answer for another's."""

from __future__ import annotations

import json

import pytest

from neuroscope.core import releases
from neuroscope.labels.neuronpedia.cache import Answer, NeuronpediaCache
from neuroscope.labels.neuronpedia.registry import lookup
from neuroscope.labels.sources import build_chain
from neuroscope.store import paths

HOSTED = [(r, s) for r in releases.registry()["releases"] if r["family"] == "gemma3"
          for s in r["saes"] if "neuronpedia" in s]


@pytest.fixture(autouse=True)
def _env(cache, monkeypatch):
    monkeypatch.delenv("NEURONPEDIA_REGISTRY", raising=False)
    monkeypatch.delenv("LABELER_MODEL", raising=False)


def test_every_hosted_gemma_scope_2_sae_is_found_for_its_models():
    assert len(HOSTED) == 3 * (16 + 12)  # per size: pt 4 layers × 4 widths, it 4 × 3 (SAELens lists no 1m)
    for release, sae in HOSTED:
        path = releases.release_path(release, sae["layer"], sae["width"], sae["canonical_l0"])
        for model in release["models"]:
            for spelled in (path, f"{path}/params.safetensors"):
                ids = lookup(paths.Namespace.for_hub_sae(model, release["repo"], spelled, sae["layer"]))
                assert ids is not None, (model, spelled)
                assert (ids.model_id, ids.source_id) == (release["neuronpedia_model"], sae["neuronpedia"])
                assert ids.d_sae == release["widths"][sae["width"]]


def test_the_default_sae_of_each_gemma_3_model_has_neuronpedia_labels():
    for model in ("google/gemma-3-270m", "google/gemma-3-270m-it", "google/gemma-3-1b-pt", "google/gemma-3-1b-it",
                  "google/gemma-3-4b-pt", "google/gemma-3-4b-it"):
        sae = releases.default_sae(model)
        ids = lookup(paths.Namespace.for_hub_sae(model, sae.repo, sae.path, sae.layer))
        assert ids is not None and ids.d_sae == 16384 and ids.source_id == f"{sae.layer}-gemmascope-2-res-16k"
    ids = lookup(paths.Namespace.for_hub_sae("google/gemma-3-1b-it", "google/gemma-scope-2-1b-it",
                                             "resid_post/layer_17_width_16k_l0_medium", 17))
    assert str(ids) == "gemma-3-1b-it/17-gemmascope-2-res-16k"
    ids = lookup(paths.Namespace.for_hub_sae("google/gemma-3-1b-it", "google/gemma-scope-2-1b-pt",
                                             "resid_post/layer_22_width_1m_l0_medium", 22))
    assert (str(ids), ids.d_sae) == ("gemma-3-1b/22-gemmascope-2-res-1m", 1048576)  # the base SAE on the it model


@pytest.mark.parametrize(("model", "repo", "path"), [
    ("google/gemma-3-1b-it", "google/gemma-scope-2-1b-it", "resid_post/layer_17_width_16k_l0_small"),  # not medium
    ("google/gemma-3-1b-it", "google/gemma-scope-2-1b-it", "resid_post/layer_17_width_1m_l0_medium"),  # not hosted
    ("google/gemma-3-1b-it", "google/gemma-scope-2-1b-it", "resid_post/layer_18_width_16k_l0_medium"),  # no layer 18
    ("google/gemma-3-1b-it", "google/gemma-scope-2-1b-it", "resid_post_all/layer_17_width_16k_l0_small"),
    ("google/gemma-3-1b-it", "google/gemma-scope-2-1b-it", "resid_post/layer_17_width_16k_l0_medium/config.json"),
    ("google/gemma-3-4b-it", "google/gemma-scope-2-1b-it", "resid_post/layer_17_width_16k_l0_medium"),  # 4B model
    ("google/gemma-2-2b-it", "google/gemma-scope-2-1b-it", "resid_post/layer_17_width_16k_l0_medium"),  # Gemma 2
    ("google/gemma-3-1b-it", "google/gemma-scope-2b-pt-res", "layer_17/width_16k/average_l0_71/params.npz"),
])
def test_what_neuronpedia_does_not_host_has_no_ids(model, repo, path):
    assert lookup(paths.Namespace.for_hub_sae(model, repo, path, 17)) is None


def test_a_user_registry_entry_with_widths_per_group(tmp_path, monkeypatch):
    extra = tmp_path / "more.json"
    extra.write_text(json.dumps({"entries": [
        {"models": ["acme/lm"], "sae": "acme/saes", "sae_path": "^l(?P<layer>[0-9]+)_w(?P<width>[a-z0-9]+)$",
         "model_id": "acme-lm", "source": "{layer}-acme-{width}", "d_sae": {"16k": 16384, "1m": 1048576}}]}))
    monkeypatch.setenv("NEURONPEDIA_REGISTRY", str(extra))
    ids = lookup(paths.Namespace.for_hub_sae("acme/lm", "acme/saes", "l3_w1m", 3))
    assert (str(ids), ids.d_sae) == ("acme-lm/3-acme-1m", 1048576)
    assert lookup(paths.Namespace.for_hub_sae("acme/lm", "acme/saes", "l3_w65k", 3)) is None  # no width for it


def test_gemma_2_and_gemma_3_neuronpedia_labels_never_mix():
    g2 = paths.Namespace.for_hub_sae("google/gemma-2-2b-it", "google/gemma-scope-2b-pt-res",
                                     "layer_17/width_16k/average_l0_77/params.npz", 17)
    g3 = paths.Namespace.for_hub_sae("google/gemma-3-1b-it", "google/gemma-scope-2-1b-it",
                                     "resid_post/layer_17_width_16k_l0_medium", 17)
    stamp = "2026-01-01T00:00:00Z"
    NeuronpediaCache("gemma-2-2b", "17-gemmascope-res-16k").append([Answer(1, "gemma 2 label", None, stamp)])
    NeuronpediaCache("gemma-3-1b-it", "17-gemmascope-2-res-16k").append([Answer(1, "gemma 3 label", None, stamp)])
    two, three = build_chain(g2, 16384), build_chain(g3, 16384)
    assert (two[1], three[1]) == ("gemma 2 label", "gemma 3 label")
    assert (str(two.neuronpedia.ids), str(three.neuronpedia.ids)) == ("gemma-2-2b/17-gemmascope-res-16k",
                                                                      "gemma-3-1b-it/17-gemmascope-2-res-16k")
    assert two[2] == three[2] == "feature_2"
