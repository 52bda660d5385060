"""``neuroscope serve`` as a real process finds the calibration of what it serves in the cache by itself, says
so in its start-up panel and filters the stream; without one it warns and serves unfiltered."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

from neuroscope.cli import serve as cli
from tests.support.calib import write_corpus
from tests.support.process import start_serve
from tests.support.server import SSEReader

MSG = [{"role": "user", "content": "Tell me about the river and the old mill."}]


def _model_args(fx) -> list[str]:
    return ["--model", str(fx.model_dir), "--sae-local-path", str(fx.sae_path), "--sae-layer", str(fx.sae_layer),
            "--backend", "torch-cpu"]


def _events(srv) -> list[dict]:
    r = httpx.post(f"{srv.chat}/v1/chat/completions", json={"messages": MSG, "max_tokens": 6, "temperature": 0},
                   timeout=60)
    assert r.status_code == 200, r.text
    reader = SSEReader(f"{srv.features}/v1/features/stream?request_id={r.json()['id']}", until_complete=1)
    return [d for e, d in reader.start().wait(30) if e == "feature_activation"]


def _panel_rows(output: str) -> str:
    return " ".join(" ".join(line.strip("│ ").split()) for line in output.splitlines())


@pytest.fixture(scope="module")
def calibrated_cache(tiny_fixture, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    corpus = write_corpus(tmp / "corpus", 30)
    result = CliRunner().invoke(cli.app, ["calibrate", "run", *_model_args(tiny_fixture), "--corpus-path", str(corpus),
                                          "--samples", "30", "--max-tokens-per-sample", "64"],
                                env={"NEUROSCOPE_CACHE": str(tmp / "cache"), "COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    written = result.stdout.split("wrote ", 1)[1].split()[0]
    return tmp, written


def test_serve_finds_its_calibration_and_filters(tiny_fixture, calibrated_cache):
    tmp, written = calibrated_cache
    srv = start_serve(tmp, *_model_args(tiny_fixture), "--filter-threshold", "0.2",
                      env={"NEUROSCOPE_CACHE": str(tmp / "cache")})
    try:
        events = _events(srv)
        info = httpx.get(f"{srv.features}/v1/features/info", timeout=10).json()
    finally:
        assert srv.stop() == 0
    assert info["filter"] == {"mode": "combined", "threshold": 0.2, "calibration": written, "warning": None}
    assert (info["layer"], info["d_sae"], info["sae_input_norm"]) == (tiny_fixture.sae_layer, 256, "none")
    assert info["sae"] == str(tiny_fixture.sae_path) and info["labels"]["source"] == "fallback"
    panel = _panel_rows(srv.output)
    assert "filter combined (hides features firing on more than 20 % of tokens, ranks the rest by surprise)" in panel
    assert f"calibration{written}" in "".join(ch for ch in srv.output if ch not in "│ \n")  # folded or not
    assert "warning" not in panel
    assert len(events) == 6
    assert all("filtered_count" in e and all("surprise" in f for f in e["top_features"]) for e in events)
    assert any(e["filtered_count"] > 0 for e in events)


def test_without_calibration_serve_warns_and_does_not_filter(tiny_fixture, tmp_path):
    srv = start_serve(tmp_path, *_model_args(tiny_fixture), "--sae-input-norm", "rms",
                      env={"NEUROSCOPE_CACHE": str(tmp_path / "cache")})
    try:
        events = _events(srv)
        info = httpx.get(f"{srv.features}/v1/features/info", timeout=10).json()
    finally:
        assert srv.stop() == 0
    assert info["sae_input_norm"] == "rms"
    assert info["filter"]["mode"] == "none" and info["filter"]["calibration"] is None
    assert info["filter"]["threshold"] is None and "no calibration" in info["filter"]["warning"]
    panel = _panel_rows(srv.output)
    assert "filter none (features ranked by raw activation)" in panel
    assert "warning: no calibration for this model, SAE, layer and input norm" in panel
    assert "neuroscope calibrate run" in panel
    assert events and all("filtered_count" not in e for e in events)
    assert all(set(f) == {"index", "label", "activation"} for e in events for f in e["top_features"])
