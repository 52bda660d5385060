"""Every command on the default model says the same when that model (or its calibration) is not here: the built-in
offline demo is one flag away (``--demo``)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from neuroscope.cli import serve as cli
from neuroscope.store.hf import hub_reachable
from tests.support.cli import error_line

HINT = "for the built-in offline demo model, add --demo"


@pytest.fixture
def offline_and_empty(tmp_path, monkeypatch, cache):
    """No network, nothing in the Hugging Face cache, an empty Neuroscope cache."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    for key in ("OPENROUTER_API_KEY", "ANTHROPIC_API_KEY", "LABELER_BACKEND", "LABELER_MODEL"):
        monkeypatch.delenv(key, raising=False)
    hub_reachable.cache_clear()
    yield tmp_path
    hub_reachable.cache_clear()


def run(*args: str):
    result = CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "250"})
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize("command", [
    ("calibrate", "show"),
    ("calibrate", "run", "--samples", "4"),
    ("labels", "generate", "--labeler-backend", "http://127.0.0.1:9/v1", "--labeler", "org/model", "--samples", "4"),
])
def test_a_command_on_the_default_model_that_is_not_here_names_demo(offline_and_empty, command):
    line = error_line(run(*command))  # (`calibrate show` after `calibrate run --demo` included)
    assert line.endswith(f"({HINT})"), line


def test_labels_show_on_the_default_model_names_demo(offline_and_empty):
    result = run("labels", "show", "--features", "0-2")
    assert result.exit_code == 0, result.output
    assert HINT in result.stdout


def test_options_of_ones_own_get_no_demo_hint(offline_and_empty, tiny_fixture):
    line = error_line(run("calibrate", "show", "--model", str(tiny_fixture.model_dir), "--sae-local-path",
                          str(tiny_fixture.sae_path), "--sae-layer", str(tiny_fixture.sae_layer)))
    assert "no calibration" in line and "--demo" not in line
