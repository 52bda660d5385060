"""``models pull`` / ``models list`` know both families (Gemma 2, Gemma 3 text and multimodal-served-as-text) and
refuse the rest before any weights are fetched; ``sae list --model`` shows the model's releases (Gemma Scope 2 for
Gemma 3), which are cached, and its default."""

from __future__ import annotations

import json

import pytest

from tests.core.test_models import MODEL_FILES, hf_cache, lay_out, models_hub, npz_bytes, run  # noqa: F401
from tests.support.cli import error_line


def checkpoint(model_type: str | None) -> dict[str, bytes]:
    config = {"hidden_size": 16} if model_type is None else {"model_type": model_type, "hidden_size": 16}
    return {**MODEL_FILES, "config.json": json.dumps(config).encode()}


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text", "gemma3"])
def test_models_pull_takes_gemma_2_and_gemma_3(models_hub, model_type):
    for name, data in checkpoint(model_type).items():
        models_hub.add_model_file(f"google/m-{model_type}", name, data)
    result = run("models", "pull", f"google/m-{model_type}")
    assert result.exit_code == 0, result.output
    family = {"gemma2": "Gemma 2", "gemma3_text": "Gemma 3", "gemma3": "Gemma 3 (multimodal, served as text)"}
    row = next(r for r in run("models", "list").stdout.splitlines() if f"google/m-{model_type}" in r)
    assert f"│ {family[model_type]} " in row


@pytest.mark.parametrize(("model_type", "what"), [("llama", "a 'llama' model"), (None, "without a model_type")])
def test_models_pull_refuses_other_families_before_the_weights(models_hub, model_type, what):
    for name, data in checkpoint(model_type).items():
        models_hub.add_model_file("meta/other", name, data)
    line = error_line(run("models", "pull", "meta/other"), 1)
    assert what in line and "Neuroscope serves Gemma 2 and Gemma 3 checkpoints" in line
    assert "gemma2, gemma3_text, gemma3" in line
    assert not models_hub.requests(contains="safetensors")  # nothing but config.json was fetched


def test_models_pull_of_a_repo_without_a_config(models_hub):
    models_hub.add_model_file("acme/saes-only", "layer_1/params.npz", npz_bytes())
    assert "has no config.json" in error_line(run("models", "pull", "acme/saes-only"), 1)


def test_models_list_names_each_family(hf_cache):
    lay_out(hf_cache, "google/gemma-2-2b-it", {"config.json": b'{"model_type": "gemma2"}'})
    lay_out(hf_cache, "google/gemma-3-1b-it", {"config.json": b'{"model_type": "gemma3_text"}'})
    lay_out(hf_cache, "google/gemma-3-4b-it", {"config.json": b'{"model_type": "gemma3"}'})
    lay_out(hf_cache, "meta/llama", {"config.json": b'{"model_type": "llama"}'})
    lay_out(hf_cache, "acme/broken", {"config.json": b"not json"})
    rows = {r.split("│")[1].strip().rstrip(" *"): r.split("│")[2].strip()
            for r in run("models", "list").stdout.splitlines() if r.count("│") > 3}
    assert rows == {"google/gemma-2-2b-it": "Gemma 2", "google/gemma-3-1b-it": "Gemma 3",
                    "google/gemma-3-4b-it": "Gemma 3 (multimodal, served as text)",
                    "meta/llama": "llama (not served)", "acme/broken": "unknown (no model_type)"}


def test_sae_list_shows_a_gemma_3_models_releases_and_default(hf_cache):
    lay_out(hf_cache, "google/gemma-scope-2-1b-it", {
        "resid_post/layer_17_width_16k_l0_medium/params.safetensors": b"\x00" * 64,
        "resid_post/layer_17_width_16k_l0_medium/config.json": b"{}",
        "resid_post_all/layer_5_width_262k_l0_big/params.safetensors": b"\x00" * 64,
    })
    result = run("sae", "list", "--model", "google/gemma-3-1b-it", "--layer", "17")
    assert result.exit_code == 0, result.output
    out = result.stdout
    text = " ".join(out.split())  # titles wrap to their table's width
    assert "known: google/gemma-scope-2-1b-it — Gemma Scope 2 1B instruction-tuned, residual stream (selected" in text
    assert "known: google/gemma-scope-2-1b-it — Gemma Scope 2 1B instruction-tuned, residual stream (every" in text
    rows = [line for line in out.splitlines() if line.startswith("│ 17 ")]
    assert len(rows) == 4 + 2  # resid_post: 16k, 65k, 262k, 1m; resid_post_all: 16k, 262k
    first = rows[0]
    assert "16k" in first and "small (20) medium (60)* big (150)" in first
    assert "17-gemmascope-2-res-16k" in first and first.rstrip(" │").endswith("medium")  # cached
    assert "* the default SAE of google/gemma-3-1b-it: google/gemma-scope-2-1b-it/resid_post/layer_17_width_16k_" \
           "l0_medium, layer 17" in text
    everything = run("sae", "list", "--model", "google/gemma-3-1b-it").stdout
    assert any(line.startswith("│ 5 ") and "262k" in line and line.rstrip(" │").endswith("big")
               for line in everything.splitlines())


def test_sae_list_for_a_model_the_registry_does_not_know(hf_cache):
    result = run("sae", "list", "--model", "acme/lm")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "the registry knows no SAE release for acme/lm" in text and "google/gemma-3-4b-it" in text
