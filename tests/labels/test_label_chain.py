"""The label chain: each source wins over the ones after it, per feature; scores (stale ones ignored),
low_confidence, torn lines, counts; the demo's labels never hide a user's; and the Neuronpedia registry."""

from __future__ import annotations

import json

import pytest

from neuroscope.labels.chain import LabelChain
from neuroscope.labels.neuronpedia.cache import Answer, NeuronpediaCache
from neuroscope.labels.neuronpedia.registry import lookup
from neuroscope.labels.sources import build_chain
from neuroscope.labels.table import LabelError
from neuroscope.store import paths

MODEL, SAE = "google/gemma-2-2b-it", "google/gemma-scope-2b-pt-res"
SAE_PATH = "layer_20/width_16k/average_l0_71/params.npz"
D = 16384
LABELER = "deepseek/deepseek-v3.2"


@pytest.fixture
def ns(cache, monkeypatch):
    monkeypatch.delenv("LABELER_MODEL", raising=False)
    return paths.Namespace.for_hub_sae(MODEL, SAE, SAE_PATH, 20)


def jsonl(path, rows, torn: str = ""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn, encoding="utf-8")


def autointerp(ns, rows, labeler=LABELER, torn=""):
    jsonl(paths.autointerp_labels_file(labeler, ns),
          [{"labeler": labeler, "description": "", "prompt_sha256": "0", "input_tokens": 1, "output_tokens": 1, **r}
           for r in rows], torn)


def every_source(ns, tmp_path):
    """Feature i is named by the first i+1 sources... in reverse: feature 0 by all five, feature 4 by demo only."""
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"0": "user 0"}))
    autointerp(ns, [{"index": 0, "label": "ai 0"}, {"index": 1, "label": "ai 1"}])
    legacy = paths.legacy_autointerp_labels_file(ns)
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_text(json.dumps({str(i): {"label": f"legacy {i}", "score": 0.9} for i in range(3)}))
    NeuronpediaCache("gemma-2-2b", "20-gemmascope-res-16k").append(
        [Answer(i, f"np {i}", None, "2026-01-01T00:00:00Z") for i in range(4)])
    demo = tmp_path / "demo.json"
    demo.write_text(json.dumps({str(i): f"demo {i}" for i in range(5)}))
    return user, demo


def test_each_source_wins_over_the_ones_after_it(ns, tmp_path):
    user, demo = every_source(ns, tmp_path)
    chain = build_chain(ns, D, labels_path=str(user), demo_labels_path=demo)
    got = [(chain.entry(i).label, chain.entry(i).source) for i in range(6)]
    assert got == [("user 0", "labels-path"), ("ai 1", "autointerp"), ("legacy 2", "autointerp-legacy"),
                   ("np 3", "neuronpedia"), ("demo 4", "demo"), ("feature_5", "numeric")]
    assert [chain[i] for i in range(6)] == [label for label, _ in got]
    assert chain.counts() == {"labels-path": 1, "autointerp": 1, "autointerp-legacy": 1, "neuronpedia": 1,
                              "demo": 1, "numeric": D - 5}
    assert chain.named == 5 and chain.source == str(user)
    assert chain.neuronpedia.ids is not None and str(chain.neuronpedia.ids) == "gemma-2-2b/20-gemmascope-res-16k"


def test_without_a_labels_path_the_map_source_is_the_next_best(ns, tmp_path):
    _, demo = every_source(ns, tmp_path)
    chain = build_chain(ns, D, demo_labels_path=demo)
    assert chain.entry(0).source == "autointerp" and chain.source == str(paths.autointerp_labels_file(LABELER, ns))


def test_demo_labels_never_hide_a_users_labels(ns, tmp_path):
    demo = tmp_path / "demo.json"
    demo.write_text(json.dumps({str(i): f"random feature {i}" for i in range(0, 10, 2)}))
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"2": "rivers", "3": "mills"}))
    chain = build_chain(ns, D, labels_path=str(user), demo_labels_path=demo)
    assert (chain[2], chain[3], chain[4], chain[5]) == ("rivers", "mills", "random feature 4", "feature_5")
    # the user's auto-interp labels too
    autointerp(ns, [{"index": 4, "label": "four"}])
    assert build_chain(ns, D, demo_labels_path=demo)[4] == "four"


def test_the_chosen_labeler_and_the_last_line_win(ns, monkeypatch):
    autointerp(ns, [{"index": 9, "label": "old"}, {"index": 9, "label": "new"}])
    autointerp(ns, [{"index": 9, "label": "other labeler's"}], labeler="anthropic/claude-haiku")
    assert build_chain(ns, D)[9] == "new"
    assert build_chain(ns, D, labeler="anthropic/claude-haiku")[9] == "other labeler's"
    monkeypatch.setenv("LABELER_MODEL", "anthropic/claude-haiku")
    assert build_chain(ns, D)[9] == "other labeler's"


def test_scores_only_for_the_current_label(ns):
    autointerp(ns, [{"index": 1, "label": "numbers"}, {"index": 2, "label": "new label"}, {"index": 3, "label": "x"}])
    jsonl(paths.autointerp_scores_file(LABELER, ns), [
        {"index": 1, "label": "numbers", "score": 0.3, "scorer": "s"},
        {"index": 1, "label": "numbers", "score": 0.82, "scorer": "s"},  # the last one for the label wins
        {"index": 2, "label": "old label", "score": 0.99, "scorer": "s"},  # stale: scored another label
        {"index": 3, "label": "x", "score": 0.1, "scorer": "s"},
    ])
    detail = build_chain(ns, D, threshold=0.5).detail()
    assert detail["1"] == {"label": "numbers", "source": "autointerp", "score": 0.82}
    assert detail["2"] == {"label": "new label", "source": "autointerp"}
    assert detail["3"] == {"label": "x", "source": "autointerp", "score": 0.1, "low_confidence": True}
    assert detail["4"] == {"label": "feature_4", "source": "numeric"}
    assert len(detail) == D


def test_torn_last_lines_are_skipped(ns):
    autointerp(ns, [{"index": 1, "label": "whole"}], torn='{"index": 2, "label": "to')
    jsonl(paths.autointerp_scores_file(LABELER, ns), [{"index": 1, "label": "whole", "score": 0.7}], torn='{"ind')
    cache = NeuronpediaCache("gemma-2-2b", "20-gemmascope-res-16k")
    jsonl(cache.path, [{"index": 5, "label": "np five", "fetched_at": "2026-01-01T00:00:00Z"}], torn='{"index": 6')
    chain = build_chain(ns, D)
    assert chain.entry(1).score == 0.7 and chain[2] == "feature_2" and chain[5] == "np five"
    # an append after a torn line starts on a line of its own
    cache.append([Answer(6, "np six", 0.5, "2026-01-01T00:00:00Z")])
    assert build_chain(ns, D).entry(6) == chain.entry(6).__class__("np six", "neuronpedia", 0.5)


def test_a_broken_legacy_file_is_a_warning_a_broken_labels_path_an_error(ns, tmp_path):
    legacy = paths.legacy_autointerp_labels_file(ns)
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_text("{not json")
    chain = build_chain(ns, D)
    assert chain.warnings and "legacy" in chain.warnings[0]
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    with pytest.raises(LabelError):
        build_chain(ns, D, labels_path=str(bad))


def test_neuronpedia_none_answers_expire_after_a_day(ns):
    NeuronpediaCache("gemma-2-2b", "20-gemmascope-res-16k").append(
        [Answer(1, None, None, "2000-01-01T00:00:00Z"), Answer(2, None, None, Answer(0, None).to_json()["fetched_at"])])
    chain = build_chain(ns, D)
    assert chain.wants_neuronpedia(1)  # an old "none": ask again
    assert not chain.wants_neuronpedia(2)  # a fresh one: not this run
    assert chain.wants_neuronpedia(3)


def test_neuronpedia_answers_fill_in_below_better_sources(ns):
    autointerp(ns, [{"index": 1, "label": "ai"}])
    chain = build_chain(ns, D)
    assert not chain.wants_neuronpedia(1)
    chain.add_neuronpedia(Answer(1, "np", None, "t"))
    chain.add_neuronpedia(Answer(2, "np two", 0.2, "t"))
    chain.add_neuronpedia(Answer(3, None, None, "t"))
    assert (chain[1], chain[2], chain[3]) == ("ai", "np two", "feature_3")
    assert chain.detail()["2"] == {"label": "np two", "source": "neuronpedia", "score": 0.2, "low_confidence": True}
    assert not chain.wants_neuronpedia(3) and chain.counts()["neuronpedia"] == 1


def test_a_plain_labels_file_as_a_chain(tmp_path):
    from neuroscope.labels.table import Labels

    p = tmp_path / "l.json"
    p.write_text(json.dumps({"1": {"label": "one", "score": 0.4}}))
    chain = LabelChain.of(Labels.load(p, 4))
    assert chain.source == str(p) and chain.detail()["1"] == {"label": "one", "source": "labels-path", "score": 0.4,
                                                               "low_confidence": True}
    assert LabelChain.of(Labels.load(None, 4)).source == "fallback"


# ---------------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("model", ["google/gemma-2-2b", "google/gemma-2-2b-it"])
@pytest.mark.parametrize("layer", [0, 12, 25])
def test_registry_knows_gemma_scope_16k_at_every_layer(model, layer):
    for l0 in (22, 71, 176):
        ns = paths.Namespace.for_hub_sae(model, SAE, f"layer_{layer}/width_16k/average_l0_{l0}/params.npz", layer)
        ids = lookup(ns)
        assert (ids.model_id, ids.source_id, ids.d_sae) == ("gemma-2-2b", f"{layer}-gemmascope-res-16k", 16384)


@pytest.mark.parametrize(("model", "sae", "sae_path"), [
    ("google/gemma-2-9b-it", SAE, SAE_PATH),  # another model
    (MODEL, "someone/else", SAE_PATH),  # another SAE repo
    (MODEL, SAE, "layer_20/width_65k/average_l0_61/params.npz"),  # a width the registry lacks
    (MODEL, SAE, "layer_26/width_16k/average_l0_71/params.npz"),  # beyond the model's layers
])
def test_registry_skips_what_it_does_not_know(model, sae, sae_path):
    assert lookup(paths.Namespace.for_hub_sae(model, sae, sae_path, 20)) is None


def test_unknown_sae_skips_neuronpedia_quietly(ns, tmp_path):
    other = paths.Namespace.for_hub_sae("google/gemma-2-9b-it", SAE, SAE_PATH, 20)
    chain = build_chain(other, D)
    assert chain.neuronpedia.ids is None and "registry" in chain.neuronpedia.skipped
    assert build_chain(ns, 256).neuronpedia.skipped.startswith("Neuronpedia's gemma-2-2b/20-gemmascope-res-16k has")


def test_registry_ships_as_package_data():
    import tomllib
    from importlib import resources
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "*.json" in pyproject["tool"]["setuptools"]["package-data"]["neuroscope.data"]
    data = json.loads(resources.files("neuroscope.data").joinpath("neuronpedia.json").read_text())
    assert data["entries"] and all({"models", "sae", "sae_path", "model_id", "source", "d_sae"} <= set(e)
                                   for e in data["entries"])


def test_the_labelers_description_travels_with_its_label(ns):
    """``detail()`` (what ``?detail=true`` serves) carries the description of the label shown, the last line's."""
    f = paths.autointerp_labels_file("deepseek/deepseek-v3.2", ns)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("".join(json.dumps(r) + "\n" for r in (
        {"index": 1, "label": "a", "description": "first account"},
        {"index": 1, "label": "b", "description": "second account"},
        {"index": 2, "label": "c", "description": "dropped later"},
        {"index": 2, "label": "d"})))
    detail = build_chain(ns, 16, labeler="deepseek/deepseek-v3.2").detail()
    assert detail["1"] == {"label": "b", "source": "autointerp", "description": "second account"}
    assert detail["2"] == {"label": "d", "source": "autointerp"} and "description" not in detail["3"]
