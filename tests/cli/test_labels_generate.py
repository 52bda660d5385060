"""``neuroscope labels generate`` end to end on the tiny checkpoint against loopback fakes of an OpenAI-compatible
server and of Anthropic's Messages API: where labels land and what they hold, concurrency, retries on 429 / 500,
malformed answers, an immediate stop on 401, dead features, and a key that never shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from neuroscope.cli import serve as cli
from neuroscope.core.sae import load_npz, save_npz
from neuroscope.labels.autointerp import llm
from neuroscope.labels.autointerp.generate import LABEL_FIELDS
from neuroscope.store import paths
from neuroscope.store.paths import Namespace
from tests.support.calib import write_corpus
from tests.support.cli import error_line
from tests.support.fake_llm import KEY, FakeLLM, label_for
from tests.support.net import closed_port

SAMPLES = 16
LABELER = "test-org/labeler-1"
KEYS = ("OPENROUTER_API_KEY", "ANTHROPIC_API_KEY", "LABELER_API_KEY", "LABELER_MODEL", "LABELER_BACKEND",
        "OPENROUTER_BASE_URL", "ANTHROPIC_BASE_URL")


@pytest.fixture
def cache(cache, monkeypatch) -> Path:
    for k in KEYS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(llm, "BACKOFF_BASE_S", 0.01)  # retries without the real one-second waits
    return cache


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), SAMPLES)


@pytest.fixture(scope="module")
def sae_with_dead(tiny_fixture, tmp_path_factory) -> Path:
    """The tiny SAE with features 3 and 7 unable to fire (threshold out of reach)."""
    sae = load_npz(tiny_fixture.sae_path)
    threshold = np.array(sae.threshold, copy=True)
    threshold[[3, 7]] = 1e9
    path = tmp_path_factory.mktemp("sae") / "params.npz"
    save_npz(path, type(sae)(W_enc=sae.W_enc, b_enc=sae.b_enc, threshold=threshold, W_dec=sae.W_dec, b_dec=sae.b_dec))
    return path


@pytest.fixture
def openai_fake():
    fake = FakeLLM("openai").start()
    yield fake
    fake.stop()


@pytest.fixture
def anthropic_fake():
    fake = FakeLLM("anthropic").start()
    yield fake
    fake.stop()


def generate(fx, corpus: Path, *extra: str, sae: Path | None = None, env: dict | None = None):
    args = ["labels", "generate", "--model", str(fx.model_dir), "--sae-local-path", str(sae or fx.sae_path),
            "--sae-layer", str(fx.sae_layer), "--backend", "torch-cpu", "--corpus-path", str(corpus),
            "--samples", str(SAMPLES), "--max-tokens-per-sample", "40", "--labeler", LABELER, *extra]
    result = CliRunner().invoke(cli.app, args, env={"COLUMNS": "200", **(env or {})})
    assert "Traceback" not in result.output, result.output
    return result


def namespace(fx, sae: Path | None = None) -> Namespace:
    return Namespace.for_local_sae(str(Path(fx.model_dir).resolve()), sae or fx.sae_path, fx.sae_layer)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def no_key_anywhere(result, cache: Path, key: str = KEY) -> None:
    assert key not in result.output
    for p in cache.rglob("*"):
        if p.is_file():
            assert key.encode() not in p.read_bytes(), p


def test_openai_compatible_labels_land_in_the_namespace(tiny_fixture, corpus_dir, sae_with_dead, cache, tmp_path,
                                                        openai_fake):
    openai_fake.delay = 0.05
    out = tmp_path / "copy.json"
    result = generate(tiny_fixture, corpus_dir, "--labeler-backend", openai_fake.url, "--concurrency", "3",
                      "--features", "0-29", "--output", str(out), sae=sae_with_dead, env={"LABELER_API_KEY": KEY})
    assert result.exit_code == 0, result.output
    ns = namespace(tiny_fixture, sae_with_dead)
    labels = lines(paths.autointerp_labels_file(LABELER, ns))
    assert sorted(x["index"] for x in labels) == [i for i in range(30) if i not in (3, 7)]
    for x in labels:
        assert tuple(x) == LABEL_FIELDS
        assert x["labeler"] == LABELER and x["label"] == "seen " + x["prompt_sha256"][:12]  # its own prompt's answer
        assert x["input_tokens"] > 0 and x["output_tokens"] == 9
    assert openai_fake.max_active == 3  # the concurrency limit, reached and never passed
    assert len(openai_fake.requests) == 28  # dead features are never sent
    req = openai_fake.requests[0]
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    body = req["body"]
    assert body["model"] == LABELER and body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert set(body["response_format"]["json_schema"]["schema"]["required"]) == {"label", "description"}
    assert "<<" in body["messages"][1]["content"]  # the activating tokens are marked
    dead = json.loads(paths.autointerp_dead_file(LABELER, ns).read_text())
    assert dead["dead"] == [3, 7] and dead["samples"] == SAMPLES
    assert "28 labelled now" in result.stdout and "2 dead" in result.stdout
    assert json.loads(out.read_text()) == {str(x["index"]): x["label"] for x in labels}
    no_key_anywhere(result, cache)

    again = generate(tiny_fixture, corpus_dir, "--labeler-backend", openai_fake.url, "--features", "0-29",
                     sae=sae_with_dead, env={"LABELER_API_KEY": KEY})
    assert again.exit_code == 0 and "0 labelled now, 28 already there" in again.stdout
    assert len(openai_fake.requests) == 28  # nothing asked twice


def test_openrouter_is_auto_with_its_key_and_its_base_url_moves(tiny_fixture, corpus_dir, cache, openai_fake):
    env = {"OPENROUTER_API_KEY": KEY, "OPENROUTER_BASE_URL": openai_fake.url, "ANTHROPIC_API_KEY": "unused"}
    result = generate(tiny_fixture, corpus_dir, "--features", "5", env=env)
    assert result.exit_code == 0, result.output
    (req,) = openai_fake.requests
    assert req["headers"]["Authorization"] == f"Bearer {KEY}" and req["headers"]["X-Title"] == "Neuroscope"
    assert [x["index"] for x in lines(paths.autointerp_labels_file(LABELER, namespace(tiny_fixture)))] == [5]


def test_anthropic_messages_with_a_forced_tool_call(tiny_fixture, corpus_dir, cache, anthropic_fake):
    env = {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": anthropic_fake.url}  # auto: no OpenRouter key
    result = generate(tiny_fixture, corpus_dir, "--features", "10-14", env=env)
    assert result.exit_code == 0, result.output
    labels = lines(paths.autointerp_labels_file(LABELER, namespace(tiny_fixture)))
    assert sorted(x["index"] for x in labels) == [10, 11, 12, 13, 14]
    req = anthropic_fake.requests[0]
    assert req["headers"]["x-api-key"] == KEY and req["headers"]["anthropic-version"] == "2023-06-01"
    body = req["body"]
    assert body["tool_choice"] == {"type": "tool", "name": body["tools"][0]["name"]}
    assert body["tools"][0]["input_schema"]["required"] == ["label", "description"]
    assert isinstance(body["system"], str) and body["messages"][0]["role"] == "user"
    sent = {label_for(r["body"]["system"], r["body"]["messages"][0]["content"]) for r in anthropic_fake.requests}
    assert {x["label"] for x in labels} == sent  # each feature got the answer to its own prompt
    for x in labels:
        assert x["input_tokens"] > 0
    no_key_anywhere(result, cache)


def test_429_and_500_are_retried_and_a_malformed_answer_is_recorded(tiny_fixture, corpus_dir, cache, openai_fake):
    env = {"LABELER_API_KEY": KEY}
    # one worker: feature 0 meets 429 then 500 then succeeds; feature 1 three unusable answers; 2 and 3 are fine
    openai_fake.faults = ["429", "500", None, "badjson", "malformed", "malformed"]
    result = generate(tiny_fixture, corpus_dir, "--labeler-backend", openai_fake.url, "--concurrency", "1",
                      "--features", "0-3", env=env)
    assert result.exit_code == 1, result.output
    ns = namespace(tiny_fixture)
    assert sorted(x["index"] for x in lines(paths.autointerp_labels_file(LABELER, ns))) == [0, 2, 3]
    failed = lines(paths.autointerp_failed_file(LABELER, ns))
    assert [f["index"] for f in failed] == [1] and "malformed" in failed[0]["error"]
    assert "1 failed" in result.stdout and "1 features failed (1)" in result.stderr
    assert len(openai_fake.requests) == 3 + 3 + 2

    fixed = generate(tiny_fixture, corpus_dir, "--labeler-backend", openai_fake.url, "--features", "0-3", env=env)
    assert fixed.exit_code == 0 and "1 labelled now, 3 already there" in fixed.stdout
    assert not paths.autointerp_failed_file(LABELER, ns).exists()


def test_anthropic_overload_and_a_text_answer(tiny_fixture, corpus_dir, cache, anthropic_fake):
    env = {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": anthropic_fake.url}
    anthropic_fake.faults = ["529", "malformed", None]  # overloaded, then a text block instead of the tool call
    result = generate(tiny_fixture, corpus_dir, "--labeler-backend", "anthropic", "--concurrency", "1",
                      "--features", "5", env=env)
    assert result.exit_code == 0, result.output
    assert len(anthropic_fake.requests) == 3
    assert [x["index"] for x in lines(paths.autointerp_labels_file(LABELER, namespace(tiny_fixture)))] == [5]


def test_a_request_past_its_timeout_is_retried(tiny_fixture, corpus_dir, cache, openai_fake):
    openai_fake.faults = ["hang"]
    result = generate(tiny_fixture, corpus_dir, "--labeler-backend", openai_fake.url, "--features", "8",
                      "--request-timeout", "1", env={"LABELER_API_KEY": KEY})
    assert result.exit_code == 0, result.output
    assert len(openai_fake.requests) == 2
    assert [x["index"] for x in lines(paths.autointerp_labels_file(LABELER, namespace(tiny_fixture)))] == [8]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_refused_key_stops_at_once(tiny_fixture, corpus_dir, cache, openai_fake, concurrency):
    wrong = "sk-wrong-0123456789abcdef"
    openai_fake.delay = 0.05
    result = generate(tiny_fixture, corpus_dir, "--labeler-backend", openai_fake.url, "--concurrency",
                      str(concurrency), env={"LABELER_API_KEY": wrong})
    assert result.exit_code == 1
    line = error_line(result)
    assert "refused the key" in line and "HTTP 401" in line
    assert 1 <= len(openai_fake.requests) <= concurrency  # those already in flight; none after the first 401
    assert "[key]" in line  # the fake echoes the key it got; we never repeat it
    no_key_anywhere(result, cache, wrong)
    labels = paths.autointerp_labels_file(LABELER, namespace(tiny_fixture))
    assert not labels.exists() or labels.read_text() == ""


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_model_id_the_backend_refuses_stops_the_run(tiny_fixture, corpus_dir, cache, openai_fake, concurrency):
    """OpenRouter answers an unknown model id with 400: the first few refusals, before any answer, end the run."""
    openai_fake.unknown_model = LABELER
    result = generate(tiny_fixture, corpus_dir, "--labeler-backend", openai_fake.url, "--concurrency",
                      str(concurrency), env={"LABELER_API_KEY": KEY})
    assert result.exit_code == 1
    line = error_line(result)
    assert f"refused the first {llm.REFUSALS_BEFORE_ANY_ANSWER} requests" in line and "HTTP 400" in line
    assert "not a valid model ID" in line and "--labeler" in line
    # the refusals that stop it, plus at most those already in flight
    assert llm.REFUSALS_BEFORE_ANY_ANSWER <= len(openai_fake.requests) < llm.REFUSALS_BEFORE_ANY_ANSWER + concurrency


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_labeler_where_nothing_listens_stops_the_run_at_once(tiny_fixture, corpus_dir, cache, concurrency):
    """Connection refused before any answer is the backend's fault, not a feature's: one line, no per-feature
    retries, nothing filed as failed."""
    url = f"http://127.0.0.1:{closed_port()}/v1"
    result = generate(tiny_fixture, corpus_dir, "--labeler-backend", url, "--concurrency", str(concurrency),
                      env={"LABELER_API_KEY": KEY})
    assert result.exit_code == 1
    line = error_line(result)
    assert "cannot be reached" in line and url in line and "--labeler-backend" in line
    assert "failed after" not in result.output
    failed = paths.autointerp_failed_file(LABELER, namespace(tiny_fixture))
    assert not failed.exists() or failed.read_text() == ""


def test_a_refusal_after_answers_fails_only_that_feature(tiny_fixture, corpus_dir, cache, openai_fake):
    openai_fake.faults = [""] + ["400"] * (llm.REFUSALS_BEFORE_ANY_ANSWER + 1)  # one answer, then refusals
    result = generate(tiny_fixture, corpus_dir, "--labeler-backend", openai_fake.url, "--concurrency", "1",
                      "--features", "0-19", env={"LABELER_API_KEY": KEY})
    assert result.exit_code == 1, result.output  # some features failed: reported, not fatal
    failed = lines(paths.autointerp_failed_file(LABELER, namespace(tiny_fixture)))
    done = lines(paths.autointerp_labels_file(LABELER, namespace(tiny_fixture)))
    assert len(failed) == llm.REFUSALS_BEFORE_ANY_ANSWER + 1 and "HTTP 400" in json.dumps(failed)
    assert len(done) + len(failed) == len(openai_fake.requests)  # every feature asked once, none skipped


def test_configuration_errors_are_one_line(tiny_fixture, corpus_dir, cache, tmp_path):
    none = generate(tiny_fixture, corpus_dir)
    assert none.exit_code == 1 and "OPENROUTER_API_KEY or ANTHROPIC_API_KEY" in error_line(none)
    assert not (cache / "examples").exists()  # refused before the corpus pass
    bad = generate(tiny_fixture, corpus_dir, "--labeler-backend", "ftp://x", env={"LABELER_API_KEY": KEY})
    assert "unknown --labeler-backend" in error_line(bad)
    router = generate(tiny_fixture, corpus_dir, "--labeler-backend", "openrouter")
    assert "needs OPENROUTER_API_KEY" in error_line(router)
    far = generate(tiny_fixture, corpus_dir, "--labeler-backend", "http://127.0.0.1:9", "--features", "0-999")
    assert far.exit_code == 1 and "feature 256 is out of range" in error_line(far)
    syntax = generate(tiny_fixture, corpus_dir, "--labeler-backend", "http://127.0.0.1:9", "--features", "a-b")
    assert syntax.exit_code == 2 and "'a-b' is not an index" in error_line(syntax)


def test_generated_labels_are_shown_with_their_windows_and_served_in_the_stream(tiny_fixture, corpus_dir, cache,
                                                                                  tmp_path, openai_fake):
    """The whole path: generate → `labels show` (label, source, an example window) → `serve` puts them in events."""
    import httpx

    from tests.support.process import start_serve
    from tests.support.server import SSEReader

    assert generate(tiny_fixture, corpus_dir, "--labeler-backend", openai_fake.url,
                    env={"LABELER_API_KEY": KEY}).exit_code == 0
    ns = namespace(tiny_fixture)
    labels = {x["index"]: x["label"] for x in lines(paths.autointerp_labels_file(LABELER, ns))}
    some = sorted(labels)[:3]

    shown = CliRunner().invoke(cli.app, [
        "labels", "show", "--features", ",".join(map(str, some)), "--model", str(tiny_fixture.model_dir),
        "--sae-local-path", str(tiny_fixture.sae_path), "--sae-layer", str(tiny_fixture.sae_layer),
        "--labeler", LABELER], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    flat = " ".join(shown.stdout.split())
    for i in some:
        assert labels[i] in flat
    assert "example" in shown.stdout and "<<" in shown.stdout  # each feature's strongest window, peak marked

    srv = start_serve(tmp_path, "--model", str(tiny_fixture.model_dir), "--sae-local-path", str(tiny_fixture.sae_path),
                      "--sae-layer", str(tiny_fixture.sae_layer), "--backend", "torch-cpu", "--labeler", LABELER,
                      "--feature-filter", "none", env={"NEUROSCOPE_CACHE": str(cache)})
    try:
        r = httpx.post(f"{srv.chat}/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "the river and the mill"}], "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200, r.text
        reader = SSEReader(f"{srv.features}/v1/features/stream?request_id={r.json()['id']}", until_complete=1)
        events = [d for e, d in reader.start().wait(30) if e == "feature_activation"]
        info = httpx.get(f"{srv.features}/v1/features/info", timeout=10).json()
    finally:
        assert srv.stop() == 0
    features = [f for e in events for f in e["top_features"]]
    assert features and any(f["index"] in labels for f in features)
    for f in features:
        assert f["label"] == labels.get(f["index"], f"feature_{f['index']}")
    assert info["labels"]["sources"]["autointerp"] == len(labels)


def test_a_labeler_url_needs_the_labelers_name(tiny_fixture, corpus_dir, cache, openai_fake):
    """Labels from a server of one's own are filed under the model it runs, never the default labeler's name."""
    args = ["labels", "generate", "--model", str(tiny_fixture.model_dir), "--sae-local-path",
            str(tiny_fixture.sae_path), "--sae-layer", str(tiny_fixture.sae_layer), "--corpus-path", str(corpus_dir),
            "--labeler-backend", openai_fake.url]
    result = CliRunner().invoke(cli.app, args, env={"COLUMNS": "200", "LABELER_API_KEY": KEY})
    assert result.exit_code == 2
    assert "--labeler-backend URL needs --labeler MODEL" in error_line(result)
    assert openai_fake.requests == [] and not (cache / "autointerp_labels").exists()
