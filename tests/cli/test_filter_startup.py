"""``serve --feature-filter / --filter-threshold / --calibration-path``: the options reach the config, and a
calibration file that is missing, malformed or made for another model / SAE / layer / norm / width stops the
start with one line naming what differs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from neuroscope.calibration.stats import Accumulator
from neuroscope.cli import serve as cli
from neuroscope.config import ServeConfig
from neuroscope.core.fixtures import random_sae
from neuroscope.core.protocol import BatchStats
from neuroscope.core.sae import save_npz
from neuroscope.store import paths
from tests.support.cli import error_line


def _file(tmp_path: Path, fx, **over) -> Path:
    """A well-formed calibration for the tiny fixture (model dir, local SAE, layer 2, norm none), then ``over``."""
    d_sae = over.pop("d_sae", 256)
    acc = Accumulator(d_sae)
    ones = np.ones(d_sae)
    acc.add(BatchStats(10, count=ones, sum=ones, m2=np.zeros(d_sae), max=ones), samples=1)
    identity = {"model": str(Path(fx.model_dir).resolve()), "sae": f"local-sha256-{paths.file_sha256(fx.sae_path)}",
                "sae_path": None, "layer": fx.sae_layer, "d_sae": d_sae, "sae_input_norm": "none"}
    data = {**acc.to_json(identity), **over}
    path = tmp_path / f"cal-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(data))
    return path


def _serve(fx, *args: str):
    return CliRunner().invoke(cli.app, ["serve", "--backend", "torch-cpu", "--model", str(fx.model_dir),
                                        "--sae-local-path", str(fx.sae_path), "--sae-layer", str(fx.sae_layer), *args],
                              env={"COLUMNS": "300"})


def test_the_options_reach_the_config(monkeypatch, tmp_path):
    seen: list[ServeConfig] = []
    monkeypatch.setattr(cli, "serve", lambda config: seen.append(config) or 0)
    result = CliRunner().invoke(cli.app, ["serve", "--feature-filter", "frequency", "--filter-threshold", "0.3",
                                          "--calibration-path", str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    assert (seen[0].feature_filter, seen[0].filter_threshold, seen[0].calibration_path) == (
        "frequency", 0.3, str(tmp_path / "c.json"))
    assert CliRunner().invoke(cli.app, ["serve"]).exit_code == 0
    assert (seen[1].feature_filter, seen[1].filter_threshold, seen[1].calibration_path) == ("combined", 0.5, None)
    for bad in (["--feature-filter", "loud"], ["--filter-threshold", "1.5"], ["--filter-threshold", "-0.1"]):
        assert CliRunner().invoke(cli.app, ["serve", *bad]).exit_code == 2, bad


@pytest.mark.parametrize("change, names", [
    ({"sae_input_norm": "rms"}, "sae_input_norm 'rms' (serving 'none')"),
    ({"layer": 1}, "layer 1 (serving 2)"),
    ({"model": "google/gemma-2-2b-it"}, "model 'google/gemma-2-2b-it' (serving '"),
    ({"sae": "google/gemma-scope-2b-pt-res", "sae_path": "layer_2/params.npz"},
     "sae 'google/gemma-scope-2b-pt-res' (serving 'local-sha256-"),
    ({"d_sae": 128}, "d_sae 128 (serving 256)"),
], ids=["norm", "layer", "model", "sae", "d_sae"])
def test_a_calibration_for_another_configuration_is_refused(tiny_fixture, tmp_path, change, names):
    path = _file(tmp_path, tiny_fixture, **change)
    line = error_line(_serve(tiny_fixture, "--calibration-path", str(path)), 1)
    assert "was made for another configuration" in line and names in line and str(path) in line


def test_a_calibration_of_another_sae_file_is_refused(tiny_fixture, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    save_npz(other / "params.npz", random_sae(64, 256, seed=5))
    path = _file(tmp_path, tiny_fixture)
    result = CliRunner().invoke(cli.app, ["serve", "--backend", "torch-cpu", "--model", str(tiny_fixture.model_dir),
                                          "--sae-local-path", str(other), "--sae-layer", "2",
                                          "--calibration-path", str(path)], env={"COLUMNS": "300"})
    line = error_line(result, 1)
    assert f"local-sha256-{paths.file_sha256(other / 'params.npz')}" in line  # the SAE being served, by content


def test_missing_and_malformed_files_are_refused(tiny_fixture, tmp_path):
    assert "calibration file not found" in error_line(_serve(tiny_fixture, "--calibration-path",
                                                         str(tmp_path / "none.json")), 1)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert "is not valid JSON" in error_line(_serve(tiny_fixture, "--calibration-path", str(bad)), 1)
    short = _file(tmp_path, tiny_fixture)
    data = json.loads(short.read_text())
    data["features"]["max"] = data["features"]["max"][:5]
    short.write_text(json.dumps(data))
    assert "features.max must be a list of 256" in error_line(_serve(tiny_fixture, "--calibration-path", str(short)), 1)
    # even with the filter off, a file named on the command line must be the right one
    wrong = _file(tmp_path, tiny_fixture, layer=3)
    assert "layer 3 (serving 2)" in error_line(_serve(tiny_fixture, "--feature-filter", "none",
                                                  "--calibration-path", str(wrong)), 1)
