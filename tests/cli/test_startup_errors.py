"""`neuroscope serve` start-up failures through the real loading path: one line on stderr, exit 1."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from neuroscope.cli.serve import app
from neuroscope.core.fixtures import random_sae
from neuroscope.core.sae import save_npz


@pytest.fixture
def run(tiny_fixture):
    def _run(*args):
        result = CliRunner().invoke(app, ["serve", "--backend", "torch-cpu", "--model", str(tiny_fixture.model_dir), *args])
        return result.exit_code, result.output

    return _run


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def test_missing_sae_file(run, tmp_path):
    code, out = run("--sae-local-path", str(tmp_path / "nope.npz"), "--sae-layer", "2")
    assert code == 1 and "SAE file not found" in _one_error_line(out)


def test_sae_width_does_not_match_the_model(run, tmp_path):
    save_npz(tmp_path / "params.npz", random_sae(32, 16))
    code, out = run("--sae-local-path", str(tmp_path), "--sae-layer", "2")
    line = _one_error_line(out)
    assert code == 1 and "d_model=32" in line and "hidden size is 64" in line


def test_layer_beyond_the_model(run, tiny_fixture):
    code, out = run("--sae-local-path", str(tiny_fixture.sae_path), "--sae-layer", "9")
    line = _one_error_line(out)
    assert code == 1 and "layer 9" in line and "4 layers" in line


def test_bad_labels_file(run, tiny_fixture, tmp_path):
    (tmp_path / "labels.json").write_text("{not json")
    code, out = run("--sae-local-path", str(tiny_fixture.sae_path), "--sae-layer", "2",
                    "--labels-path", str(tmp_path / "labels.json"))
    assert code == 1 and "not valid JSON" in _one_error_line(out)


def test_model_directory_that_is_not_a_model(tmp_path, tiny_fixture):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["serve", "--backend", "torch-cpu", "--model", str(tmp_path / "empty"),
                                      "--sae-local-path", str(tiny_fixture.sae_path), "--sae-layer", "2"])
    assert result.exit_code == 1
    assert "cannot load model" in _one_error_line(result.output) and "no config.json" in result.output


def test_a_model_family_we_do_not_run(tmp_path, tiny_fixture):
    import json
    import shutil

    model_dir = shutil.copytree(tiny_fixture.model_dir, tmp_path / "llama")
    cfg = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    result = CliRunner().invoke(app, ["serve", "--backend", "torch-cpu", "--model", str(model_dir),
                                      "--sae-local-path", str(tiny_fixture.sae_path), "--sae-layer", "2"])
    line = _one_error_line(result.output)
    assert result.exit_code == 1 and "model_type 'llama' is not supported" in line
    assert "Gemma 2 (gemma2), Gemma 3 (gemma3_text, gemma3)" in line
