"""Gemma Scope 2 and SAELens SAEs from the hub (``--sae REPO --sae-path DIR``, ``sae pull``, ``sae list``) through
the real huggingface_hub code against the loopback fake hub: only the files the format needs are fetched, the layer
comes from the config, and a params.npz path's ``layer_N/`` gives the layer without any download."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from typer.testing import CliRunner

from neuroscope.cli import serve as cli
from neuroscope.config import ServeConfig
from neuroscope.core import sae_formats
from neuroscope.core.fixtures import random_sae
from neuroscope.core.sae import SAEError
from neuroscope.core.sae_writers import write_gemma_scope_2, write_saelens
from neuroscope.runtime import resolve_sae_layer
from tests.support.cli import error_line

REPO = "acme/scope-two"
GS2_DIR = "resid_post_all/layer_7_width_16k_l0_small"
SL_DIR = "blocks.5.hook_resid_post"


def _files(tmp_path, writer, name, **kw) -> dict[str, bytes]:
    d = writer(tmp_path / name, **kw)
    return {p.name: p.read_bytes() for p in d.iterdir()}


@pytest.fixture
def scope_hub(hub, tmp_path):
    sae = random_sae(16, 48, seed=4)
    for name, data in _files(tmp_path, write_gemma_scope_2, "gs2", sae=sae, layer=7).items():
        hub.add_model_file(REPO, f"{GS2_DIR}/{name}", data)
    hub.add_model_file(REPO, f"{GS2_DIR}/examples.safetensors", b"\0" * 4096)  # not the SAE's: never fetched
    topk = dataclasses.replace(sae, threshold=np.zeros(48, np.float32), architecture="topk", k=6)
    for name, data in _files(tmp_path, write_saelens, "sl", sae=topk, layer=5).items():
        hub.add_model_file(REPO, f"{SL_DIR}/{name}", data)
    buf = io.BytesIO()
    np.savez(buf, W_enc=sae.W_enc, b_enc=sae.b_enc, threshold=sae.threshold, W_dec=sae.W_dec, b_dec=sae.b_dec)
    hub.add_model_file(REPO, "layer_3/width_16k/average_l0_9/params.npz", buf.getvalue())
    return hub


def run(*args: str):
    result = CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "250"})
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize("path,fmt,layer,arch", [(GS2_DIR, "gemma-scope-2", 7, "jumprelu"),
                                                 (SL_DIR, "saelens", 5, "topk"),
                                                 (f"{GS2_DIR}/config.json", "gemma-scope-2", 7, "jumprelu"),
                                                 (f"{SL_DIR}/sae_weights.safetensors", "saelens", 5, "topk")])
def test_a_hub_directory_sae_downloads_its_two_files_only(scope_hub, path, fmt, layer, arch):
    loc = sae_formats.locate(REPO, path, None)
    sae = sae_formats.load(loc)
    assert (loc.format, sae.layer, sae.architecture, sae.d_model, sae.d_sae) == (fmt, layer, arch, 16, 48)
    assert not scope_hub.requests(contains="examples.safetensors")
    assert not scope_hub.requests(contains="params.npz")


def test_the_layer_is_resolved_from_the_hub_config_or_the_npz_path(scope_hub):
    config = ServeConfig(sae=REPO, sae_path=GS2_DIR)
    assert resolve_sae_layer(config).sae_layer == 7
    assert not scope_hub.requests(contains="params.safetensors")  # the layer needs the config only
    with pytest.raises(SAEError, match="--sae-layer 2 disagrees with SAE acme/scope-two/.*trained on layer 7"):
        resolve_sae_layer(dataclasses.replace(config, sae_layer=2))
    before = len(scope_hub.log)
    npz = ServeConfig(sae=REPO, sae_path="layer_3/width_16k/average_l0_9/params.npz")
    assert resolve_sae_layer(npz).sae_layer == 3
    assert resolve_sae_layer(dataclasses.replace(npz, sae_layer=1)).sae_layer == 1  # an npz declares no layer
    assert len(scope_hub.log) == before  # a params.npz path is read without asking the hub


def test_sae_pull_and_list_of_directory_formats(scope_hub):
    result = run("sae", "pull", REPO, "--path", GS2_DIR)
    assert result.exit_code == 0, result.output
    assert f"{GS2_DIR}/params.safetensors (Gemma Scope 2): d_model 16 × d_sae 48" in result.stdout
    result = run("sae", "pull", REPO, "--path", SL_DIR)
    assert result.exit_code == 0, result.output
    assert "(SAELens): d_model 16 × d_sae 48" in result.stdout
    assert run("sae", "pull", REPO, "--path", "layer_3/width_16k/average_l0_9").exit_code == 0
    listed = run("sae", "list").stdout
    for path, fmt in ((GS2_DIR, "Gemma Scope 2"), (SL_DIR, "SAELens"),
                      ("layer_3/width_16k/average_l0_9/params.npz", "Gemma Scope (params.npz)")):
        line = next(line for line in listed.splitlines() if path in line)
        assert fmt in line and "16 × 48" in line
    assert not scope_hub.requests(contains="examples.safetensors")


def test_sae_pull_of_a_refused_or_incomplete_directory_is_one_line(scope_hub, tmp_path):
    sae = random_sae(16, 48, seed=4)
    for name, data in _files(tmp_path, write_gemma_scope_2, "tc", sae=sae, layer=7,
                             extra_config={"type": "transcoder"}).items():
        scope_hub.add_model_file(REPO, f"transcoder_all/layer_7/{name}", data)
    assert "is a transcoder" in error_line(run("sae", "pull", REPO, "--path", "transcoder_all/layer_7"), 1)
    scope_hub.add_model_file(REPO, "half/config.json", (tmp_path / "gs2" / "config.json").read_bytes())
    assert "no such file" in error_line(run("sae", "pull", REPO, "--path", "half"), 1)
