"""The SAE a command uses when none is named: each model's default from the registry (Gemma 2 exactly as it
always was), moved to a given --sae-layer; a model the registry does not know needs its SAE named (one line, exit
2); every command resolves it the same way; and the start-up panel says the SAE was the model's default."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from neuroscope.cli import serve as cli
from neuroscope.config import DEFAULT_LAYER, DEFAULT_SAE, DEFAULT_SAE_PATH, SaeChoiceError, ServeConfig, with_sae
from tests.support.cli import error_line


def run(*args: str):
    result = CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "250"})
    assert "Traceback" not in result.output, result.output
    return result


def serve(captured, *args: str) -> ServeConfig:
    result = run("serve", *args)
    assert result.exit_code == 0, result.output
    (cfg,) = captured
    return cfg


def test_the_default_model_keeps_its_default_sae(captured):
    cfg = serve(captured)
    assert (cfg.sae, cfg.sae_path, cfg.sae_layer) == (DEFAULT_SAE, DEFAULT_SAE_PATH, DEFAULT_LAYER)
    assert cfg.sae_default and cfg.demo_fallback


@pytest.mark.parametrize(("model", "repo", "layer"), [
    ("google/gemma-3-270m", "google/gemma-scope-2-270m-pt", 12),
    ("google/gemma-3-270m-it", "google/gemma-scope-2-270m-it", 12),
    ("google/gemma-3-1b-pt", "google/gemma-scope-2-1b-pt", 17),
    ("google/gemma-3-1b-it", "google/gemma-scope-2-1b-it", 17),
    ("google/gemma-3-4b-pt", "google/gemma-scope-2-4b-pt", 22),
    ("google/gemma-3-4b-it", "google/gemma-scope-2-4b-it", 22),
    ("google/gemma-2-2b", DEFAULT_SAE, 20),
])
def test_a_gemma_3_model_gets_its_own_default(captured, model, repo, layer):
    cfg = serve(captured, "--model", model)
    path = DEFAULT_SAE_PATH if repo == DEFAULT_SAE else f"resid_post/layer_{layer}_width_16k_l0_medium"
    assert (cfg.model, cfg.sae, cfg.sae_path, cfg.sae_layer) == (model, repo, path, layer)
    assert cfg.sae_default and not cfg.demo_fallback and cfg.sae_local_path is None


def test_a_given_layer_moves_the_default_there(captured):
    cfg = serve(captured, "--model", "google/gemma-3-1b-it", "--sae-layer", "13")
    assert (cfg.sae, cfg.sae_path, cfg.sae_layer) == ("google/gemma-scope-2-1b-it",
                                                      "resid_post/layer_13_width_16k_l0_medium", 13)
    captured.clear()
    cfg = serve(captured, "--sae-layer", "12")  # Gemma 2: that layer's canonical 16k SAE
    assert (cfg.sae, cfg.sae_path, cfg.sae_layer) == (DEFAULT_SAE, "layer_12/width_16k/average_l0_82/params.npz", 12)


def test_a_layer_without_such_an_sae_is_one_line(captured):
    line = error_line(run("serve", "--model", "google/gemma-3-1b-it", "--sae-layer", "20"), 2)
    assert "google/gemma-scope-2-1b-it has no 16k SAE" in line and "layer 20" in line and "7, 13, 17, 22" in line
    assert "--sae-path resid_post_all/layer_20_width_16k_l0_small" in line and captured == []  # one that exists
    line = error_line(run("serve", "--sae-layer", "26"), 2)  # Gemma 2 2B has blocks 0-25
    assert "no 16k SAE like google/gemma-2-2b-it's default at layer 26" in line and "e.g." not in line


def test_an_unknown_model_needs_its_sae_named(captured, tmp_path):
    line = error_line(run("serve", "--model", "acme/lm"), 2)
    assert "no default SAE is known for acme/lm" in line and "--sae-local-path" in line and "--sae " in line
    assert "needs --sae-path" in error_line(run("serve", "--model", "acme/lm", "--sae", "acme/saes"), 2)
    assert "needs --sae " in error_line(run("serve", "--model", "acme/lm", "--sae-path", "l3/params.npz"), 2)
    assert captured == []
    cfg = serve(captured, "--model", "acme/lm", "--sae-local-path", str(tmp_path / "params.npz"))
    assert cfg.sae_local_path == str(tmp_path / "params.npz") and not cfg.sae_default
    captured.clear()
    cfg = serve(captured, "--model", "acme/lm", "--sae", "acme/saes", "--sae-path", "l3/params.npz")
    assert (cfg.sae, cfg.sae_path, cfg.sae_default) == ("acme/saes", "l3/params.npz", False)


def test_another_repo_of_a_known_model_needs_its_path(captured):
    line = error_line(run("serve", "--model", "google/gemma-3-1b-it", "--sae", "google/gemma-scope-2-1b-pt"), 2)
    assert "--sae google/gemma-scope-2-1b-pt needs --sae-path" in line and "google/gemma-scope-2-1b-it" in line
    cfg = serve(captured, "--model", "google/gemma-3-1b-it", "--sae-path", "resid_post_all/layer_3_width_16k_l0_big")
    assert (cfg.sae, cfg.sae_path, cfg.sae_default) == ("google/gemma-scope-2-1b-it",
                                                        "resid_post_all/layer_3_width_16k_l0_big", False)


def test_the_demo_is_untouched(captured):
    cfg = serve(captured, "--demo")
    assert cfg.demo and not cfg.demo_fallback
    assert "cannot be combined with --model" in error_line(run("serve", "--demo", "--model", "acme/lm"), 2)


@pytest.mark.parametrize("command", [["calibrate", "show"], ["labels", "show", "--features", "1"],
                                     ["features", "search", "pirate"]])
def test_every_command_resolves_the_same_default(cache, monkeypatch, command):
    """Each command reads the namespace of the resolved model, SAE and layer (a Gemma 3 label is found for the
    Gemma 3 model only), and refuses an unknown model alike."""
    from neuroscope.labels.neuronpedia.cache import Answer, NeuronpediaCache

    monkeypatch.setenv("NEURONPEDIA_URL", "http://127.0.0.1:9")
    NeuronpediaCache("gemma-3-1b-it", "17-gemmascope-2-res-16k").append(
        [Answer(5, "pirate speech", None, "2026-01-01T00:00:00Z")])
    result = run(*command, "--model", "google/gemma-3-1b-it")
    text = " ".join(result.output.split())
    if command[0] == "calibrate":
        assert result.exit_code == 1
        assert ("google__gemma-3-1b-it/google__gemma-scope-2-1b-it/resid_post__layer_17_width_16k_l0_medium/"
                "layer_17/norm_none/calibration.json") in text.replace(" ", "")
    elif command[0] == "labels":  # no calibration, no SAE here: the width comes from Neuronpedia's registry
        assert result.exit_code == 0, result.output
        assert "1 feature of 16,384" in text and "Neuronpedia gemma-3-1b-it/17-gemmascope-2-res-16k" in text
    else:
        assert result.exit_code == 0, result.output
        assert "pirate speech" in text
        gemma2 = run(*command)
        assert gemma2.exit_code == 0 and "no feature's label matches 'pirate'" in gemma2.stdout
    unknown = run(*command, "--model", "acme/lm")
    assert "no default SAE is known for acme/lm" in error_line(unknown, 2)


def test_steer_and_inspect_refuse_an_unknown_model_before_loading_anything():
    assert "no default SAE is known" in error_line(run("steer", "hi", "-f", "1:add:2", "--model", "acme/lm"), 2)
    assert "no default SAE is known" in error_line(run("features", "inspect", "hi", "--model", "acme/lm"), 2)


def test_code_built_configs_resolve_through_with_sae():
    cfg = with_sae(ServeConfig())
    assert (cfg.sae, cfg.sae_path, cfg.sae_layer, cfg.sae_default) == (DEFAULT_SAE, DEFAULT_SAE_PATH, 20, True)
    cfg = with_sae(ServeConfig(model="google/gemma-3-4b-it", sae_layer=9))
    assert (cfg.sae, cfg.sae_path, cfg.sae_layer) == ("google/gemma-scope-2-4b-it",
                                                      "resid_post/layer_9_width_16k_l0_medium", 9)
    named = ServeConfig(model="acme/lm", sae="acme/saes", sae_path="l3/params.npz", sae_layer=3)
    assert with_sae(named) is named
    with pytest.raises(SaeChoiceError, match="no default SAE is known for acme/lm"):
        with_sae(ServeConfig(model="acme/lm"))
