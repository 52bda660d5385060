"""Detection scoring: balanced accuracy by its definition, and ``labels score`` / ``generate --score`` against a
fake scorer whose answers are known (it knows which windows are activating, and errs on purpose)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neuroscope.cli import serve as cli
from neuroscope.core.checkpoint import load_tokenizer
from neuroscope.labels.autointerp import examples as ex_mod
from neuroscope.labels.autointerp.generate import held_out
from neuroscope.labels.autointerp.scoring import balanced_accuracy
from neuroscope.store import paths
from neuroscope.store.paths import Namespace
from tests.support.calib import write_corpus
from tests.support.fake_llm import KEY, FakeLLM

SAMPLES = 24
LABELER = "test-org/labeler-1"


def test_balanced_accuracy_by_its_definition():
    truth = [True, True, True, True, False, False]
    assert balanced_accuracy([1, 1, 1, 1, 0, 0], truth) == 1.0
    assert balanced_accuracy([0, 0, 0, 0, 1, 1], truth) == 0.0
    assert balanced_accuracy([1, 1, 1, 1, 1, 1], truth) == 0.5  # always yes: chance, whatever the balance
    assert balanced_accuracy([1, 0, 0, 0, 0, 1], truth) == pytest.approx(0.5 * (1 / 4 + 1 / 2))
    with pytest.raises(ValueError):
        balanced_accuracy([1, 0], [True, True])


@pytest.fixture
def cache(cache, monkeypatch) -> Path:
    for k in ("OPENROUTER_API_KEY", "ANTHROPIC_API_KEY", "LABELER_API_KEY", "LABELER_MODEL", "LABELER_BACKEND"):
        monkeypatch.delenv(k, raising=False)
    return cache


@pytest.fixture
def fake():
    f = FakeLLM("openai").start()
    yield f
    f.stop()


def invoke(fx, command: str, *extra: str, corpus: Path | None = None):
    args = ["labels", command, "--model", str(fx.model_dir), "--sae-local-path", str(fx.sae_path), "--sae-layer",
            str(fx.sae_layer), "--backend", "torch-cpu", "--labeler", LABELER, *extra]
    if corpus is not None:
        args += ["--corpus-path", str(corpus), "--samples", str(SAMPLES), "--max-tokens-per-sample", "40"]
    result = CliRunner().invoke(cli.app, args, env={"COLUMNS": "200", "LABELER_API_KEY": KEY})
    assert "Traceback" not in result.output, result.output
    return result


class Oracle:
    """Knows each feature's activating windows (computed here from the examples file) and flips its answer to
    the first window shown when ``err`` is set."""

    def __init__(self, fx, err: bool):
        self.err, self.fx, self.active = err, fx, None

    def load(self, ns: Namespace) -> None:
        ex = ex_mod.newest(ns)
        tok = load_tokenizer(Path(self.fx.model_dir))
        self.active = {i: {ex_mod.render(tok, w.tokens) for w in held_out(ex, i)} for i in range(ex.d_sae)}

    def __call__(self, user: str, windows: list[str]) -> list[int]:
        index = int(re.search(r"^Label: feature (\d+)$", user, re.M).group(1))
        answers = [int(w in self.active[index]) for w in windows]
        if self.err:
            answers[0] = 1 - answers[0]
        return answers


def namespace(fx) -> Namespace:
    return Namespace.for_local_sae(str(Path(fx.model_dir).resolve()), fx.sae_path, fx.sae_layer)


def test_scores_against_a_scorer_with_known_answers(tiny_fixture, cache, tmp_path, fake):
    corpus = write_corpus(tmp_path / "corpus", SAMPLES)
    assert invoke(tiny_fixture, "generate", "--labeler-backend", fake.url, "--features", "0-39",
                  corpus=corpus).exit_code == 0
    ns = namespace(tiny_fixture)
    labels = tmp_path / "mine.json"
    labels.write_text(json.dumps({str(i): f"feature {i}" for i in range(40)}))
    oracle = Oracle(tiny_fixture, err=True)
    oracle.load(ns)
    fake.detect = oracle
    before = len(fake.requests)
    result = invoke(tiny_fixture, "score", "--labels", str(labels), "--scorer", "test-org/scorer", "--labeler-backend",
                    fake.url, "--features", "0-39", "--threshold", "0.9")
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in paths.autointerp_scores_file(LABELER, ns).read_text().splitlines()]
    assert len(rows) >= 10 and len(rows) == len(fake.requests) - before
    for row in rows:
        n = row["n_activating"]
        assert n >= 1 and row["n_non_activating"] == n  # balanced
        assert row["label"] == f"feature {row['index']}" and row["scorer"] == "test-org/scorer"
        assert row["labeler"] == LABELER
        # one mistake among n activating + n quiet windows: one recall is (n - 1) / n, the other 1
        assert row["score"] == pytest.approx(0.5 * ((n - 1) / n + 1))
        assert sum(row["truth"]) == n and row["predictions"] != row["truth"]
    scores = sorted(r["score"] for r in rows)
    mean = sum(scores) / len(scores)
    assert f"{mean:.3f}" in result.stdout
    above = sum(s >= 0.9 for s in scores) / len(scores)
    assert f"{100 * above:.1f} %" in result.stdout
    assert "without enough windows to score" in result.stdout

    again = invoke(tiny_fixture, "score", "--labels", str(labels), "--scorer", "test-org/scorer", "--labeler-backend",
                   fake.url, "--features", "0-39")
    assert again.exit_code == 0 and f"0 scored now, {len(rows)} already there" in again.stdout


def test_generate_with_score_scores_its_own_labels(tiny_fixture, cache, tmp_path, fake):
    corpus = write_corpus(tmp_path / "corpus", SAMPLES)
    assert invoke(tiny_fixture, "generate", "--labeler-backend", fake.url, "--features", "0-9",
                  corpus=corpus).exit_code == 0
    ns = namespace(tiny_fixture)
    labels = {json.loads(x)["label"]: json.loads(x)["index"]
              for x in paths.autointerp_labels_file(LABELER, ns).read_text().splitlines()}
    oracle = Oracle(tiny_fixture, err=False)
    oracle.load(ns)
    fake.detect = lambda user, windows: oracle(  # the fake's labels name a prompt, not an index: map them back
        re.sub(r"^Label: (.*)$", lambda m: f"Label: feature {labels[m.group(1)]}", user, count=1, flags=re.M),
        windows)
    result = invoke(tiny_fixture, "generate", "--labeler-backend", fake.url, "--features", "0-9", "--score",
                    corpus=corpus)
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in paths.autointerp_scores_file(LABELER, ns).read_text().splitlines()]
    assert rows and all(r["score"] == 1.0 and r["scorer"] == LABELER for r in rows)
    assert "100.0 %" in result.stdout


def test_score_without_examples_is_one_line(tiny_fixture, cache, tmp_path):
    labels = tmp_path / "l.json"
    labels.write_text(json.dumps({"1": "x"}))
    result = invoke(tiny_fixture, "score", "--labels", str(labels), "--labeler-backend", "http://127.0.0.1:9")
    assert result.exit_code == 1 and "run `neuroscope labels generate`" in result.stderr
    missing = invoke(tiny_fixture, "score", "--labeler-backend", "http://127.0.0.1:9")
    assert missing.exit_code == 1 and "labels file not found" in missing.stderr
