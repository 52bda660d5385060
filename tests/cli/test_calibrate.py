"""``neuroscope calibrate run | show`` on the tiny checkpoint: the statistics against a numpy reference, the file
format, where files go, up-to-date runs, the default corpus, and every error as one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from neuroscope.calibration import corpus
from neuroscope.cli import serve as cli
from neuroscope.core import registry
from neuroscope.core.checkpoint import load_tokenizer
from neuroscope.core.sae import load_npz
from neuroscope.store import paths
from neuroscope.store.hf import hub_reachable
from neuroscope.store.paths import Namespace
from tests.support import wikitext_data as wt
from tests.support.calib import reference_statistics, write_corpus
from tests.support.cli import error_line
from tests.support.fake_hub import FakeHub, point_in_process, refused_endpoint

MAX_TOKENS = 40
FIELDS = {"format", "model", "sae", "sae_path", "layer", "d_sae", "sae_input_norm", "samples", "tokens", "created",
          "features", "summary"}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), 14)


def invoke(*args: str):
    result = CliRunner().invoke(cli.app, ["calibrate", *args], env={"COLUMNS": "200"})
    assert "Traceback" not in result.output, result.output
    return result


def model_args(fx, *extra: str) -> list[str]:
    return ["--model", str(fx.model_dir), "--sae-local-path", str(fx.sae_path), "--sae-layer", str(fx.sae_layer),
            *extra]


def calibrate(fx, corpus_path: Path, *extra: str, backend: str = "torch-cpu", samples: int = 14):
    return invoke("run", *model_args(fx), "--backend", backend, "--corpus-path", str(corpus_path),
                  "--samples", str(samples), "--batch-size", "4", "--max-tokens-per-sample", str(MAX_TOKENS), *extra)


def default_file(fx, norm: str = "none", layer: int | None = None) -> Path:
    ns = Namespace.for_local_sae(str(Path(fx.model_dir).resolve()), fx.sae_path,
                                 fx.sae_layer if layer is None else layer, norm)
    return paths.calibration_file(ns)


@pytest.mark.parametrize("backend", registry.available() or [pytest.param(None, marks=pytest.mark.skip("none"))])
def test_statistics_equal_a_numpy_reference(tiny_fixture, corpus_dir, cache, backend):
    result = calibrate(tiny_fixture, corpus_dir, backend=backend)
    assert result.exit_code == 0, result.output
    path = default_file(tiny_fixture)
    assert str(path) in result.stdout.replace("\n", "")
    data = json.loads(path.read_text())
    assert set(data) == FIELDS and data["format"] == "neuroscope-calibration/1"
    sae = load_npz(tiny_fixture.sae_path)
    assert {k: data[k] for k in ("model", "sae_path", "layer", "d_sae", "sae_input_norm", "samples")} == {
        "model": str(Path(tiny_fixture.model_dir).resolve()), "sae_path": None, "layer": tiny_fixture.sae_layer,
        "d_sae": sae.d_sae, "sae_input_norm": "none", "samples": 14}
    assert data["sae"] == f"local-sha256-{paths.file_sha256(tiny_fixture.sae_path)}"
    assert set(data["features"]) == {"firing_rate", "mean", "std", "max"}
    assert all(len(v) == sae.d_sae and all(isinstance(x, float) for x in v) for v in data["features"].values())

    texts = [s.text for s in corpus.iter_corpus(corpus_dir)]
    ref = reference_statistics(tiny_fixture, sae, load_tokenizer(tiny_fixture.model_dir), texts, MAX_TOKENS)
    assert data["tokens"] == ref["tokens"]
    np.testing.assert_allclose(data["features"]["firing_rate"], ref["features"]["firing_rate"], rtol=1e-12)
    for key in ("mean", "std", "max"):
        np.testing.assert_allclose(data["features"][key], ref["features"][key], rtol=1e-4, atol=1e-4, err_msg=key)
    assert data["summary"]["dead"] == ref["summary"]["dead"]
    assert data["summary"]["dense"] == ref["summary"]["dense"]
    assert data["summary"]["mean_l0"] == pytest.approx(ref["summary"]["mean_l0"], rel=1e-9)
    # the end summary: dead, dense, mean L0 and the densest features
    out = result.stdout
    assert f"dead {ref['summary']['dead']}" in out and f"dense {ref['summary']['dense']}" in out
    assert f"mean L0 {ref['summary']['mean_l0']:.1f}" in out
    densest = int(np.argmax(ref["features"]["firing_rate"]))
    assert "10 densest features" in out and f"\n│ {densest:>7} │" in out


def test_files_are_namespaced_by_layer_and_input_norm(tiny_fixture, corpus_dir, cache):
    first = calibrate(tiny_fixture, corpus_dir, samples=4)
    assert first.exit_code == 0, first.output
    raw = default_file(tiny_fixture).read_bytes()
    rms = calibrate(tiny_fixture, corpus_dir, "--sae-input-norm", "rms", samples=4)
    assert rms.exit_code == 0, rms.output
    lower = invoke("run", "--model", str(tiny_fixture.model_dir), "--sae-local-path", str(tiny_fixture.sae_path),
                   "--sae-layer", "1", "--backend", "torch-cpu", "--corpus-path", str(corpus_dir), "--samples", "4",
                   "--max-tokens-per-sample", str(MAX_TOKENS))
    assert lower.exit_code == 0, lower.output
    files = {default_file(tiny_fixture), default_file(tiny_fixture, "rms"), default_file(tiny_fixture, layer=1)}
    assert len(files) == 3 and all(f.is_file() for f in files)
    assert default_file(tiny_fixture).read_bytes() == raw  # the other runs did not touch it
    assert json.loads(default_file(tiny_fixture, "rms").read_text())["sae_input_norm"] == "rms"
    assert json.loads(default_file(tiny_fixture, layer=1).read_text())["layer"] == 1
    assert sorted(p.relative_to(cache).parts[0] for p in files) == ["calibration"] * 3


def test_a_finished_run_is_up_to_date_until_its_options_change(tiny_fixture, corpus_dir, cache, tmp_path):
    out = tmp_path / "cal.json"
    first = calibrate(tiny_fixture, corpus_dir, "--output", str(out), samples=6)
    assert first.exit_code == 0 and "wrote" in first.stdout
    before = out.read_bytes()
    again = calibrate(tiny_fixture, corpus_dir, "--output", str(out), samples=6)
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith("up to date:") and out.read_bytes() == before
    forced = calibrate(tiny_fixture, corpus_dir, "--output", str(out), "--force", samples=6)
    assert forced.exit_code == 0 and forced.stdout.startswith("wrote")
    same = lambda d: {k: v for k, v in d.items() if k != "created"}  # noqa: E731
    assert same(json.loads(out.read_bytes())) == same(json.loads(before))  # recomputed, same numbers
    more = calibrate(tiny_fixture, corpus_dir, "--output", str(out), samples=8)
    assert more.stdout.startswith("wrote") and json.loads(out.read_text())["samples"] == 8
    out.write_text(out.read_text().replace('"samples": 8', '"samples": 9'))  # edited since: not up to date
    assert calibrate(tiny_fixture, corpus_dir, "--output", str(out), samples=8).stdout.startswith("wrote")
    assert not default_file(tiny_fixture).exists()  # --output replaces the default location


def test_a_small_corpus_is_used_whole_and_says_so(tiny_fixture, corpus_dir, cache):
    result = calibrate(tiny_fixture, corpus_dir, samples=500)
    assert result.exit_code == 0, result.output
    assert json.loads(default_file(tiny_fixture).read_text())["samples"] == 14
    assert "holds only 14 samples (500 asked)" in result.stderr


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub()
    wt.add_to(fake)
    fake.start()
    point_in_process(monkeypatch, fake.endpoint, tmp_path / "hf")
    yield fake
    fake.stop()
    hub_reachable.cache_clear()


def test_without_a_corpus_path_the_default_corpus_is_built(tiny_fixture, cache, hub):
    result = invoke("run", *model_args(tiny_fixture), "--backend", "torch-cpu", "--samples", "5",
                    "--max-tokens-per-sample", "24")
    assert result.exit_code == 0, result.output
    built = cache / "corpus" / "wikitext" / "wikitext-103-raw-v1" / "train"
    assert (built / "manifest.json").is_file()
    assert json.loads(default_file(tiny_fixture).read_text())["samples"] == 5


def test_offline_without_a_corpus_is_one_line(tiny_fixture, cache, tmp_path, monkeypatch):
    point_in_process(monkeypatch, refused_endpoint(), tmp_path / "hf-offline")
    try:
        result = invoke("run", *model_args(tiny_fixture), "--backend", "torch-cpu", "--samples", "5")
    finally:
        hub_reachable.cache_clear()
    assert result.exit_code == 1
    line = error_line(result)
    assert "--corpus-path" in line and "corpus build" in line


def test_errors_are_one_line(tiny_fixture, corpus_dir, cache, tmp_path):
    missing = invoke("run", *model_args(tiny_fixture), "--corpus-path", str(tmp_path / "nowhere"))
    assert missing.exit_code == 1 and "corpus directory not found" in error_line(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no .txt files" in error_line(invoke("run", *model_args(tiny_fixture), "--corpus-path", str(empty)))
    bad_sae = invoke("run", "--model", str(tiny_fixture.model_dir), "--sae-local-path", str(tmp_path / "x.npz"),
                     "--sae-layer", "2", "--corpus-path", str(corpus_dir))
    assert bad_sae.exit_code == 1 and "SAE file not found" in error_line(bad_sae)
    deep = invoke("run", *model_args(tiny_fixture)[:-2], "--sae-layer", "9", "--backend", "torch-cpu",
                  "--corpus-path", str(corpus_dir))
    assert deep.exit_code == 1 and "layer 9" in error_line(deep)
    backend = invoke("run", *model_args(tiny_fixture), "--backend", "tpu", "--corpus-path", str(corpus_dir))
    assert backend.exit_code == 1 and "tpu" in error_line(backend)
    assert invoke("run", *model_args(tiny_fixture), "--samples", "0").exit_code == 2
    assert invoke("run", *model_args(tiny_fixture), "--max-tokens-per-sample", "1").exit_code == 2


# ------------------------------------------------------------------------------------------------ show
def test_show_reads_the_file_of_the_serving_configuration(tiny_fixture, corpus_dir, cache, tmp_path):
    assert calibrate(tiny_fixture, corpus_dir).exit_code == 0
    labels = tmp_path / "labels.json"
    data = json.loads(default_file(tiny_fixture).read_text())
    rate = np.array(data["features"]["firing_rate"])
    densest, rarest = int(np.argmax(rate)), int(np.argmin(np.where(rate > 0, rate, np.inf)))
    labels.write_text(json.dumps({str(densest): "always on", str(rarest): "a rare concept"}))
    result = invoke("show", *model_args(tiny_fixture), "--top", "3", "--labels-path", str(labels))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert str(default_file(tiny_fixture)) in "".join(out.split())  # a long path folds over lines
    assert f"{data['tokens']:,} counted tokens" in out
    assert "3 densest features" in out and "3 rarest features that fired" in out
    assert f"dead {data['summary']['dead']}" in out and f"dense {data['summary']['dense']}" in out
    dense_rows = out.split("3 densest features")[1].split("3 rarest")[0]
    rare_rows = out.split("3 rarest features that fired")[1]
    assert "always on" in dense_rows and f"│ {densest:>7} │" in dense_rows
    assert "a rare concept" in rare_rows and f"│ {rarest:>7} │" in rare_rows
    assert "feature_" not in out  # no made-up labels where none is known

    other = invoke("show", "--stats", str(default_file(tiny_fixture)), "--top", "2")
    assert other.exit_code == 0 and "2 densest features" in other.stdout


def test_show_errors_are_one_line(tiny_fixture, cache, tmp_path):
    none_yet = invoke("show", *model_args(tiny_fixture))
    assert none_yet.exit_code == 1
    line = error_line(none_yet)
    assert "no calibration" in line and "calibrate run" in line
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert "not a neuroscope-calibration/1 file" in error_line(invoke("show", "--stats", str(bad)))
    assert "not found" in error_line(invoke("show", "--stats", str(tmp_path / "missing.json")))


def test_the_demo_is_calibrated_under_its_own_name(corpus_dir, cache):
    result = invoke("run", "--demo", "--backend", "torch-cpu", "--corpus-path", str(corpus_dir), "--samples", "4",
                    "--max-tokens-per-sample", "32")
    assert result.exit_code == 0, result.output
    files = list((cache / "calibration").rglob("calibration.json"))
    assert len(files) == 1 and files[0].relative_to(cache / "calibration").parts[0] == "neuroscope-demo"
    assert json.loads(files[0].read_text())["model"] == "neuroscope-demo"
    shown = invoke("show", "--demo", "--top", "20")
    assert shown.exit_code == 0, shown.output
    assert "random feature" in shown.stdout  # the demo's example labels, where it names a feature
    clash = invoke("run", "--demo", "--sae-layer", "1", "--corpus-path", str(corpus_dir))
    assert clash.exit_code == 2 and "cannot be combined with --sae-layer" in clash.output
