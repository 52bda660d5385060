"""``serve`` and ``calibrate`` with a Gemma Scope 2 or SAELens directory through ``--sae-local-path`` on the tiny
checkpoint: the layer comes from the SAE's config, the start-up panel names the format and architecture, the
calibration equals the numpy reference of that architecture; a disagreeing ``--sae-layer`` and a d_in that is not
the model's hidden size are one error line and exit 1."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from neuroscope.calibration import corpus
from neuroscope.calibration import stats as calibration
from neuroscope.cli import serve as cli
from neuroscope.core.checkpoint import load_tokenizer
from neuroscope.core.fixtures import random_sae
from neuroscope.core.sae_formats import detect, load
from neuroscope.core.sae_writers import write_gemma_scope_2, write_saelens
from neuroscope.store import paths
from tests.support.calib import reference_statistics, write_corpus
from tests.support.cli import error_line
from tests.support.process import start_serve

MAX_TOKENS = 32


def gs2_dir(root: Path, fx, d_model: int | None = None) -> Path:
    sae = random_sae(d_model or fx.shape.hidden_size, fx.shape.d_sae, seed=21)
    return write_gemma_scope_2(root / "gs2" / "resid_post" / "layer_x", sae, layer=fx.sae_layer)


def saelens_topk_dir(root: Path, fx, d_model: int | None = None) -> Path:
    base = random_sae(d_model or fx.shape.hidden_size, fx.shape.d_sae, seed=22)
    sae = dataclasses.replace(base, threshold=np.zeros(fx.shape.d_sae, np.float32), architecture="topk", k=12,
                              apply_b_dec_to_input=True, b_dec=np.full(base.d_model, 0.1, np.float32))
    return write_saelens(root / "saelens-topk", sae, layer=fx.sae_layer)


WRITERS = {"gemma-scope-2": gs2_dir, "saelens-topk": saelens_topk_dir}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), 6)


def invoke(*args: str):
    result = CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "200"})
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize("kind", list(WRITERS))
def test_calibrate_takes_the_layer_from_the_sae_and_equals_the_reference(tiny_fixture, corpus_dir, cache, tmp_path,
                                                                         kind):
    d = WRITERS[kind](tmp_path, tiny_fixture)
    result = invoke("calibrate", "run", "--model", str(tiny_fixture.model_dir), "--sae-local-path", str(d),
                    "--backend", "torch-cpu", "--corpus-path", str(corpus_dir), "--samples", "6", "--batch-size", "3",
                    "--max-tokens-per-sample", str(MAX_TOKENS))
    assert result.exit_code == 0, result.output
    ns = calibration.namespace_for(str(tiny_fixture.model_dir), "", "", str(d), tiny_fixture.sae_layer, "none")
    data = json.loads(paths.calibration_file(ns).read_text())
    assert data["layer"] == tiny_fixture.sae_layer  # from the SAE's config: no --sae-layer was given
    sae = load(detect(d))
    texts = [s.text for s in corpus.iter_corpus(corpus_dir)]
    ref = reference_statistics(tiny_fixture, sae, load_tokenizer(tiny_fixture.model_dir), texts, MAX_TOKENS)
    assert data["tokens"] == ref["tokens"]
    np.testing.assert_allclose(data["features"]["firing_rate"], ref["features"]["firing_rate"], rtol=1e-12)
    np.testing.assert_allclose(data["features"]["max"], ref["features"]["max"], rtol=1e-4, atol=1e-4)
    if kind == "saelens-topk":
        assert data["summary"]["mean_l0"] <= 12


@pytest.mark.parametrize("command", ["serve", "calibrate"])
@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_disagreeing_sae_layer_is_one_line(tiny_fixture, tmp_path, cache, command, kind):
    d = WRITERS[kind](tmp_path, tiny_fixture)
    args = (["serve", "--backend", "torch-cpu"] if command == "serve" else
            ["calibrate", "run", "--backend", "torch-cpu", "--corpus-path", str(tmp_path)])
    result = invoke(*args, "--model", str(tiny_fixture.model_dir), "--sae-local-path", str(d), "--sae-layer", "1")
    line = error_line(result, 1)
    assert f"--sae-layer 1 disagrees with SAE {d}, which was trained on layer {tiny_fixture.sae_layer}" in line


@pytest.mark.parametrize("kind", list(WRITERS))
def test_an_sae_of_another_width_is_one_line(tiny_fixture, tmp_path, cache, kind):
    d = WRITERS[kind](tmp_path, tiny_fixture, d_model=32)
    result = invoke("serve", "--backend", "torch-cpu", "--model", str(tiny_fixture.model_dir), "--sae-local-path",
                    str(d))
    line = error_line(result, 1)
    assert "d_model=32" in line and "hidden size is 64" in line


def test_a_refused_sae_is_one_line_at_start_up(tiny_fixture, tmp_path, cache):
    sae = random_sae(tiny_fixture.shape.hidden_size, tiny_fixture.shape.d_sae)
    d = write_gemma_scope_2(tmp_path / "tc", sae, layer=2, extra_config={
        "type": "transcoder", "hf_hook_point_out": "model.layers.2.post_feedforward_layernorm.output"})
    result = invoke("serve", "--backend", "torch-cpu", "--model", str(tiny_fixture.model_dir), "--sae-local-path",
                    str(d))
    assert "is a transcoder" in error_line(result, 1)


@pytest.mark.parametrize("kind,panel", [("gemma-scope-2", "Gemma Scope 2, jumprelu, float32"),
                                        ("saelens-topk", "SAELens, topk (k=12), float32")])
def test_serve_starts_with_the_sae_and_says_its_format(tiny_fixture, tmp_path, kind, panel):
    d = WRITERS[kind](tmp_path, tiny_fixture)
    env = {"NEUROSCOPE_CACHE": str(tmp_path / "cache")}
    srv = start_serve(tmp_path, "--backend", "torch-cpu", "--model", str(tiny_fixture.model_dir),
                      "--sae-local-path", str(d), "--no-neuronpedia", env=env)
    try:
        out = srv.output
        assert panel in out
        assert f"output of block {tiny_fixture.sae_layer} of 4" in out
        body = {"messages": [{"role": "user", "content": "Tell me about the river."}], "max_tokens": 4,
                "temperature": 0}
        r = httpx.post(f"{srv.chat}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("kind", list(WRITERS))
def test_labels_show_reads_the_width_and_layer_of_a_directory_sae(tiny_fixture, tmp_path, cache, kind):
    d = WRITERS[kind](tmp_path, tiny_fixture)
    result = invoke("labels", "show", "--model", str(tiny_fixture.model_dir), "--sae-local-path", str(d),
                    "--features", "255")
    assert result.exit_code == 0, result.output  # the width (256) from the safetensors header, no model loaded
    assert "feature_255" in result.stdout
    result = invoke("labels", "show", "--model", str(tiny_fixture.model_dir), "--sae-local-path", str(d),
                    "--features", "256")
    assert "out of range: the SAE has 256 features" in error_line(result, 2)
    result = invoke("labels", "show", "--model", str(tiny_fixture.model_dir), "--sae-local-path", str(d),
                    "--sae-layer", "0", "--features", "1")
    assert "which was trained on layer 2" in error_line(result, 1)
