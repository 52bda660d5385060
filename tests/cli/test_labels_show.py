"""``neuroscope labels show``: the chain's label, source, score and firing rate per feature, without the model;
ranges, and one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from neuroscope.calibration import stats as calibration
from neuroscope.cli import serve as cli
from neuroscope.config import DEFAULT_MODEL, DEFAULT_SAE, DEFAULT_SAE_PATH
from neuroscope.store import paths
from tests.support.cli import error_line

D = 16384


def invoke(*args: str):
    result = CliRunner().invoke(cli.app, ["labels", "show", *args], env={"COLUMNS": "200"})
    assert "Traceback" not in result.output, result.output
    return result


def rows(result) -> dict[int, list[str]]:
    out = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0].isdigit():
            out[int(cells[0])] = cells[1:]
    return out


@pytest.fixture
def ns(cache, monkeypatch):
    for name in ("LABELER_MODEL", "NEURONPEDIA_REGISTRY"):
        monkeypatch.delenv(name, raising=False)
    return paths.Namespace.for_hub_sae(DEFAULT_MODEL, DEFAULT_SAE, DEFAULT_SAE_PATH, 20)


def test_the_default_sae_without_the_model(ns, tmp_path):
    """No model, no SAE file: d_sae from the registry; labels from every source; firing rates from calibration."""
    f = paths.autointerp_labels_file("deepseek/deepseek-v3.2", ns)
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps({"index": 4521, "label": "French text", "description": "", "labeler": "x",
                             "prompt_sha256": "", "input_tokens": 1, "output_tokens": 1}) + "\n")
    paths.autointerp_scores_file("deepseek/deepseek-v3.2", ns).write_text(
        json.dumps({"index": 4521, "label": "French text", "score": 0.31, "scorer": "x"}) + "\n")
    np_file = paths.neuronpedia_file("gemma-2-2b", "20-gemmascope-res-16k")
    np_file.parent.mkdir(parents=True)
    np_file.write_text(json.dumps({"index": 3022, "label": "dates", "score": 0.8, "fetched_at": "2026-01-01T00:00:00Z"})
                       + "\n")
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"1": "mine"}))
    result = invoke("--features", "0-1,4521,3022", "--labels-path", str(user))
    assert result.exit_code == 0, result.output
    r = rows(result)
    assert list(r) == [0, 1, 4521, 3022]
    assert r[0][:3] == ["feature_0", "numeric", ""]
    assert r[1][:2] == ["mine", "labels-path"]
    assert r[4521][:3] == ["French text", "autointerp", "0.31 low"]
    assert r[3022][:3] == ["dates", "neuronpedia", "0.80"]
    assert "Neuronpedia gemma-2-2b/20-gemmascope-res-16k" in result.stdout and "no calibration" in result.stdout

    # with a calibration file: its width, and firing rates
    rate = [0.0] * D
    rate[4521] = 0.0123
    cal = paths.calibration_file(ns)
    cal.parent.mkdir(parents=True)
    cal.write_text(json.dumps({"format": calibration.FORMAT, "d_sae": D, "tokens": 100,
                               "features": {k: rate for k in ("firing_rate", "mean", "std", "max")}}))
    shown = rows(invoke("--features", "4521"))
    assert shown[4521][-1] == "1.23 %"
    assert rows(invoke("--features", "4521", "--label-threshold", "0.3"))[4521][2] == "0.31"


def test_demo_labels_and_a_local_sae(ns, tiny_fixture):
    r = rows(invoke("--demo", "--features", "2,3"))
    assert r[2][:2] == ["random feature 2", "demo"] and r[3][:2] == ["feature_3", "numeric"]
    local = invoke("--model", str(tiny_fixture.model_dir), "--sae-local-path", str(tiny_fixture.sae_path),
                   "--sae-layer", "2", "--features", "255")
    assert local.exit_code == 0 and rows(local)[255][:2] == ["feature_255", "numeric"]  # width from the file
    assert "not in Neuronpedia's registry" in local.stdout


@pytest.mark.parametrize(("spec", "message"), [
    ("16384", "out of range: the SAE has 16384 features (0..16383)"),
    ("0-16384", "out of range"),
    ("5-2", "runs backwards"),
    ("a", "not a feature index"),
    ("1,,2", "empty item"),
    ("-3", "not a feature index"),
])
def test_bad_features_exit_2(ns, spec, message):
    result = invoke("--features", spec)
    assert result.exit_code == 2
    assert message in error_line(result)


def test_unknown_width_is_one_line(ns):
    result = invoke("--model", "someone/model", "--sae", "someone/sae", "--sae-path", "x.npz", "--features", "1")
    assert result.exit_code == 1
    assert "cannot tell how many features" in error_line(result)


def test_broken_labels_path(ns, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    result = invoke("--features", "1", "--labels-path", str(bad))
    assert result.exit_code == 1 and "not valid JSON" in error_line(result)


def test_the_labelers_descriptions_are_shown(ns):
    f = paths.autointerp_labels_file("deepseek/deepseek-v3.2", ns)
    f.parent.mkdir(parents=True)
    rows_ = [{"index": 7, "label": "old", "description": "stale account"},
             {"index": 7, "label": "French text", "description": "Fires on French words inside English prose."},
             {"index": 9, "label": "dates", "description": ""}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows_))
    result = invoke("--features", "7,9")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "label" in line and "source" in line)
    assert "description" in header
    r = rows(result)
    assert r[7][:3] == ["French text", "Fires on French words inside English prose.", "autointerp"]
    assert r[9][:3] == ["dates", "", "autointerp"]
    assert "stale account" not in result.stdout
