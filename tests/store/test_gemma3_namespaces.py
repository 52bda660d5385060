"""Gemma 2 and Gemma 3 data never mix: calibration, auto-interp labels and Neuronpedia answers are kept per
(model, SAE, layer, norm); a Gemma 3 set is never served for a Gemma 2 SAE or the other way round, and push / pull
carry each to its own namespace (Gemma Scope 2's directory SAEs included)."""

from __future__ import annotations

import json

import pytest

from neuroscope.config import ServeConfig, with_sae
from neuroscope.labels.sources import build_chain
from neuroscope.runtime import resolve_filter
from neuroscope.store import datarepo, paths
from neuroscope.store.paths import Namespace
from tests.store.test_datarepo import LABELER, REPO, calibration_json, run, tree, write
from tests.support.hub_fixtures import WRITE_TOKEN

D = 16384
GEMMA2 = with_sae(ServeConfig())  # google/gemma-2-2b-it, its default SAE at layer 20
GEMMA3 = with_sae(ServeConfig(model="google/gemma-3-1b-it", sae_layer=17))  # its Gemma Scope 2 default
NS2 = Namespace.for_hub_sae(GEMMA2.model, GEMMA2.sae, GEMMA2.sae_path, GEMMA2.sae_layer)
NS3 = Namespace.for_hub_sae(GEMMA3.model, GEMMA3.sae, GEMMA3.sae_path, GEMMA3.sae_layer)


def test_the_two_defaults_have_distinct_namespaces():
    assert NS3.path.as_posix() == ("google__gemma-3-1b-it/google__gemma-scope-2-1b-it/"
                                   "resid_post__layer_17_width_16k_l0_medium/layer_17/norm_none")
    assert NS2.path != NS3.path and paths.calibration_file(NS2) != paths.calibration_file(NS3)
    # the same Gemma Scope 2 SAE read from another model, layer or norm is another namespace too
    others = [Namespace.for_hub_sae("google/gemma-3-1b-pt", NS3.sae, NS3.sae_path, 17),
              Namespace.for_hub_sae(NS3.model, NS3.sae, NS3.sae_path, 13),
              Namespace.for_hub_sae(NS3.model, NS3.sae, NS3.sae_path, 17, "rms")]
    assert len({ns.path for ns in [NS3, *others]}) == 4


@pytest.mark.parametrize(("mine", "other"), [(GEMMA3, GEMMA2), (GEMMA2, GEMMA3)], ids=["gemma3", "gemma2"])
def test_a_calibration_serves_only_its_own_model_and_sae(cache, mine, other):
    ns = Namespace.for_hub_sae(mine.model, mine.sae, mine.sae_path, mine.sae_layer)
    write(paths.calibration_file(ns), calibration_json(ns, D))
    flt, warning = resolve_filter(mine, D)
    assert warning is None and flt.mode == "combined" and str(paths.calibration_file(ns)) in str(flt.calibration)
    flt, warning = resolve_filter(other, D)
    assert flt.mode == "none" and "no calibration for this model" in warning
    # named explicitly, the wrong one is refused with what differs
    from neuroscope.calibration.stats import CalibrationError

    with pytest.raises(CalibrationError, match="model"):
        resolve_filter(ServeConfig(**{**other.__dict__, "calibration_path": str(paths.calibration_file(ns))}), D)


def test_labels_of_one_family_never_answer_for_the_other(cache, monkeypatch):
    monkeypatch.delenv("LABELER_MODEL", raising=False)
    write(paths.autointerp_labels_file(LABELER, NS3), '{"index": 1, "label": "gemma 3 rivers"}\n')
    write(paths.autointerp_labels_file(LABELER, NS2), '{"index": 2, "label": "gemma 2 mountains"}\n')
    three, two = build_chain(NS3, D, neuronpedia=False), build_chain(NS2, D, neuronpedia=False)
    assert (three[1], three[2]) == ("gemma 3 rivers", "feature_2")
    assert (two[1], two[2]) == ("feature_1", "gemma 2 mountains")


def test_push_and_pull_keep_each_namespace(hub, cache, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    files = [write(paths.calibration_file(NS2), calibration_json(NS2, D)),
             write(paths.calibration_file(NS3), calibration_json(NS3, D, seed=1)),
             write(paths.autointerp_labels_file(LABELER, NS2), '{"index": 1, "label": "two"}\n'),
             write(paths.autointerp_labels_file(LABELER, NS3), '{"index": 1, "label": "three"}\n'),
             write(paths.neuronpedia_file("gemma-3-1b-it", "17-gemmascope-2-res-16k"), '{"index": 1, "label": "x"}\n')]
    pushed = {p.relative_to(cache).as_posix(): p.read_bytes() for p in files}
    assert run("push", "--repo", REPO).exit_code == 0
    manifest = json.loads(hub.repos[REPO]["manifest.json"])
    spaces = {(e["kind"], json.dumps(e["namespace"], sort_keys=True)) for e in manifest["files"]}
    assert ("calibration", json.dumps(NS3.as_dict(), sort_keys=True)) in spaces
    assert ("calibration", json.dumps(NS2.as_dict(), sort_keys=True)) in spaces
    assert ("labels", json.dumps({**NS3.as_dict(), "labeler": LABELER}, sort_keys=True)) in spaces
    assert ("neuronpedia", json.dumps({"neuronpedia_model": "gemma-3-1b-it",
                                       "neuronpedia_source": "17-gemmascope-2-res-16k"}, sort_keys=True)) in spaces
    for entry in manifest["files"]:  # every path is where that namespace keeps its kind
        assert datarepo.expected_path(entry["kind"], entry["namespace"]).as_posix() == entry["path"]
    assert run("clean", "all").exit_code == 0
    monkeypatch.delenv("HF_TOKEN")
    result = run("pull", "--repo", REPO)
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in tree(cache).items() if not k.startswith("trash/")} == pushed
    flt3, _ = resolve_filter(GEMMA3, D)
    flt2, _ = resolve_filter(GEMMA2, D)
    assert flt3.calibration != flt2.calibration and "gemma-3-1b-it" in str(flt3.calibration)
