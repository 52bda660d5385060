"""``neuroscope labels fetch --source neuronpedia`` against a loopback fake of Neuronpedia's bucket and API:
gzipped JSON-lines batches until a 404, the API for what the export lacks, resuming after a failed run, an
unreachable export (the API for everything) and an unreachable everything."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from neuroscope.cli import serve as cli
from neuroscope.labels.neuronpedia.cache import NeuronpediaCache
from neuroscope.store import paths
from tests.support.net import closed_port
from tests.support.neuronpedia_fake import FakeNeuronpedia, explanation

D = 16384
MISSING = {5, 77, 16000}  # not in the export: 5 and 16000 are on the API, 77 is nowhere


def invoke(*args: str):
    result = CliRunner().invoke(cli.app, ["labels", "fetch", *args], env={"COLUMNS": "200"})
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def env(monkeypatch, cache):
    for name in ("NEURONPEDIA_URL", "NEURONPEDIA_DATASETS_URL", "NEURONPEDIA_API_KEY", "NEURONPEDIA_REGISTRY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def fake(env):
    f = FakeNeuronpedia()
    rows = []
    for i in range(D):
        if i in MISSING:
            continue
        rows.append(explanation(f"export {i}", index=i))
        if i % 1000 == 0:  # a second, better-scored explanation of the same feature
            rows.append(explanation(f"better {i}", 0.9, index=i))
    f.batches = [rows[k:k + 6000] for k in range(0, len(rows), 6000)]
    f.features = {5: [explanation("api five", 0.6)], 16000: [explanation("api 16000")]}
    env.setenv("NEURONPEDIA_DATASETS_URL", f.url)
    env.setenv("NEURONPEDIA_URL", f.url)
    yield f
    f.stop()


def batch_requests(fake: FakeNeuronpedia) -> list[str]:
    return [s.path.rsplit("/", 1)[1] for s in fake.seen if "/explanations/" in s.path]


def test_export_then_api_for_the_rest(fake):
    fake.batch_faults = {1: ["500"]}  # retried
    result = invoke()
    assert result.exit_code == 0, result.output
    cache = NeuronpediaCache("gemma-2-2b", "20-gemmascope-res-16k", D).load()
    assert len(cache) == D
    assert cache[0].label == "better 0" and cache[0].score == 0.9 and cache[1].label == "export 1"
    assert (cache[5].label, cache[5].score) == ("api five", 0.6) and cache[16000].label == "api 16000"
    assert cache[77].label is None
    assert batch_requests(fake) == ["batch-0.jsonl.gz", "batch-1.jsonl.gz", "batch-1.jsonl.gz", "batch-2.jsonl.gz",
                                    "batch-3.jsonl.gz"]
    assert sorted(int(s.path.rsplit("/", 1)[1]) for s in fake.feature_requests()) == sorted(MISSING)
    out = " ".join(result.stdout.split())
    assert f"{D - 1:,} of {D:,} features labelled" in out
    assert "3 batches merged" in out and "complete" in out
    assert "3 asked, 2 labelled, 1 without an explanation, 0 given up" in out
    state = json.loads(paths.neuronpedia_export_state_file("gemma-2-2b", "20-gemmascope-res-16k").read_text())
    assert (state["merged"], state["end"]) == ([0, 1, 2], 3)

    # run again: nothing left to ask
    before = len(fake.seen)
    again = invoke()
    assert again.exit_code == 0, again.output
    assert len(fake.seen) == before
    assert "3 merged before" in " ".join(again.stdout.split())


def test_a_failed_run_resumes_where_it_stopped(fake):
    fake.batch_faults = {1: ["500"] * 10}
    first = invoke("--no-api")
    assert first.exit_code == 1
    assert "batch-1.jsonl.gz answered 500" in " ".join(first.stderr.split())
    assert batch_requests(fake).count("batch-0.jsonl.gz") == 1
    fake.batch_faults = {}
    fake.seen.clear()
    second = invoke("--no-api")
    assert second.exit_code == 0, second.output
    assert batch_requests(fake) == ["batch-1.jsonl.gz", "batch-2.jsonl.gz", "batch-3.jsonl.gz"]  # 0 is merged
    assert len(NeuronpediaCache("gemma-2-2b", "20-gemmascope-res-16k", D).load()) == D - len(MISSING)


def test_unreachable_export_falls_back_to_the_api(env, tmp_path):
    """A small SAE from NEURONPEDIA_REGISTRY: every feature comes from the API when the bucket is unreachable."""
    fake = FakeNeuronpedia(model_id="tiny", source_id="2-test")
    try:
        fake.features = {i: [explanation(f"api {i}", 0.5)] for i in range(0, 64, 2)}
        fake.faults = {3: ["429"], 4: ["500"]}
        fake.retry_after = "0"
        registry = tmp_path / "registry.json"
        registry.write_text(json.dumps({"entries": [
            {"models": ["test/tiny"], "sae": "test/sae", "sae_path": "^layer_(?P<layer>[0-9]+)/params\\.npz$",
             "model_id": "tiny", "source": "{layer}-test", "d_sae": 64}]}))
        env.setenv("NEURONPEDIA_REGISTRY", str(registry))
        env.setenv("NEURONPEDIA_URL", fake.url)
        env.setenv("NEURONPEDIA_DATASETS_URL", f"http://127.0.0.1:{closed_port()}")
        result = invoke("--model", "test/tiny", "--sae", "test/sae", "--sae-path", "layer_2/params.npz",
                        "--sae-layer", "2")
        assert result.exit_code == 0, result.output
        assert "cannot reach" in result.stderr
        cache = NeuronpediaCache("tiny", "2-test", 64).load()
        assert len(cache) == 64 and cache[4].label == "api 4" and cache[3].label is None
        assert "64 asked, 32 labelled, 32 without an explanation" in " ".join(result.stdout.split())
    finally:
        fake.stop()


def test_everything_unreachable(env):
    env.setenv("NEURONPEDIA_URL", f"http://127.0.0.1:{closed_port()}")
    env.setenv("NEURONPEDIA_DATASETS_URL", f"http://127.0.0.1:{closed_port()}")
    result = invoke()
    assert result.exit_code == 1
    assert "cannot reach" in result.stderr and "unreachable" in result.stderr


def test_unknown_sae_is_an_error(env, tiny_fixture):
    result = invoke("--model", str(tiny_fixture.model_dir), "--sae-local-path", str(tiny_fixture.sae_path))
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: Neuronpedia's registry does not know")


def test_a_broken_registry_file_is_an_error(env, tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text("{}")
    env.setenv("NEURONPEDIA_REGISTRY", str(bad))
    result = invoke()
    assert result.exit_code == 1 and "NEURONPEDIA_REGISTRY" in result.stderr


def test_kill_9_then_resume_gives_the_same_cache(env, fake, tmp_path):
    """A real process killed after its first merged batch; the rerun skips it and ends with the labels an
    uninterrupted run writes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    fake.batch_delay = 0.4
    state = paths.neuronpedia_export_state_file("gemma-2-2b", "20-gemmascope-res-16k")
    proc_env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "neuroscope", "labels", "fetch", "--no-api"]
    proc = subprocess.Popen(cmd, env=proc_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (state.is_file() and json.loads(state.read_text())["merged"]):
            assert time.monotonic() < deadline and proc.poll() is None, "the first batch was never merged"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    merged = json.loads(state.read_text())["merged"]
    assert merged and merged != [0, 1, 2]
    fake.seen.clear()
    assert subprocess.run(cmd, env=proc_env, capture_output=True, timeout=60).returncode == 0
    assert not any(f"batch-{n}.jsonl.gz" in batch_requests(fake) for n in merged)
    resumed = {i: (a.label, a.score) for i, a in NeuronpediaCache("gemma-2-2b", "20-gemmascope-res-16k", D).load().items()}

    # the same fetch in one go, into another cache
    env.setenv("NEUROSCOPE_CACHE", str(tmp_path / "whole"))
    fake.batch_delay = 0.0
    assert invoke("--no-api").exit_code == 0
    whole = {i: (a.label, a.score) for i, a in NeuronpediaCache("gemma-2-2b", "20-gemmascope-res-16k", D).load().items()}
    assert resumed == whole and len(whole) == D - len(MISSING)
