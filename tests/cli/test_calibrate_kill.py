"""``calibrate run`` killed with SIGKILL resumes from its last checkpoint, and the file it finally writes equals
the one an uninterrupted run writes. Real subprocesses on the tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.calib import write_corpus

SAMPLES = 120


def command(fx, corpus: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "neuroscope", "calibrate", "run", "--model", str(fx.model_dir),
            "--sae-local-path", str(fx.sae_path), "--sae-layer", str(fx.sae_layer), "--backend", "torch-cpu",
            "--corpus-path", str(corpus), "--samples", str(SAMPLES), "--batch-size", "3",
            "--max-tokens-per-sample", "48", "--output", str(output)]


def env(cache: Path) -> dict[str, str]:
    # one thread: the same numerics in every run, and no spinning threads on a shared machine
    return {**os.environ, "NEUROSCOPE_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
            "OMP_NUM_THREADS": "1"}


def without_created(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("created")
    return data


def test_killed_then_rerun_equals_an_uninterrupted_run(tiny_fixture, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", SAMPLES)
    reference = tmp_path / "reference.json"
    done = subprocess.run(command(tiny_fixture, corpus, reference), env=env(tmp_path / "ref-cache"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    cache, out = tmp_path / "cache", tmp_path / "out.json"
    proc = subprocess.Popen(command(tiny_fixture, corpus, out), env=env(cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = None
    deadline = time.monotonic() + 240
    while state is None:  # wait for the first checkpoint (51 samples: batches of 3 cross 50 there)
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint"
        for path in (cache / "checkpoints" / "calibration").rglob("state.json"):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                pytest_fail(f"a checkpoint was visible half-written: {path}")
            if data["accumulator"]["samples"] >= 50:
                state = data
        time.sleep(0.01)
    proc.kill()
    proc.wait(timeout=30)
    assert proc.returncode == -9
    assert not out.exists(), "a killed run wrote its output"
    assert state["accumulator"]["samples"] in (51, 102)

    again = subprocess.run(command(tiny_fixture, corpus, out), env=env(cache), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    resumed_at = int(again.stdout.split("resumed at sample ")[1].split()[0])
    assert resumed_at >= 51 and resumed_at % 3 == 0
    assert without_created(out) == without_created(reference)  # the same numbers, bit for bit
    assert not list(cache.rglob("state.json")), "the finished run left its checkpoint state behind"
    up = subprocess.run(command(tiny_fixture, corpus, out), env=env(cache), capture_output=True, text=True,
                        timeout=300)
    assert up.returncode == 0 and up.stdout.startswith("up to date")


def pytest_fail(message: str) -> None:
    import pytest

    pytest.fail(message)
