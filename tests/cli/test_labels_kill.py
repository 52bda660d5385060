"""``labels generate`` killed with SIGKILL in each phase, then run again: the examples equal an uninterrupted
run's, and every feature is labelled exactly once. Real subprocesses on the tiny checkpoint, a loopback fake
labeler that can hold requests open."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.support.calib import write_corpus
from tests.support.fake_llm import KEY, FakeLLM

SAMPLES = 120
LABELER = "test-org/labeler-1"


def command(fx, corpus: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "neuroscope", "labels", "generate", "--model", str(fx.model_dir),
            "--sae-local-path", str(fx.sae_path), "--sae-layer", str(fx.sae_layer), "--backend", "torch-cpu",
            "--corpus-path", str(corpus), "--samples", str(SAMPLES), "--batch-size", "3",
            "--max-tokens-per-sample", "48", "--labeler", LABELER, "--labeler-backend", url, "--concurrency", "4",
            "--features", "0-99"]


def env(cache: Path) -> dict[str, str]:
    return {**os.environ, "NEUROSCOPE_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
            "OMP_NUM_THREADS": "1", "LABELER_API_KEY": KEY}


def arrays(cache: Path) -> dict[str, np.ndarray]:
    (path,) = list((cache / "examples").rglob("examples.npz"))
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def wait_for(proc, check, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.01)


def test_killed_in_each_phase_then_rerun_loses_and_repeats_nothing(tiny_fixture, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", SAMPLES)
    fake = FakeLLM("openai").start()
    try:
        ref_cache = tmp_path / "reference"
        done = subprocess.run(command(tiny_fixture, corpus, fake.url)[:-1] + ["0"], env=env(ref_cache),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        reference = arrays(ref_cache)

        # phase 1: killed once its first checkpoint is written
        cache = tmp_path / "cache"
        proc = subprocess.Popen(command(tiny_fixture, corpus, fake.url), env=env(cache), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        wait_for(proc, lambda: any((cache / "checkpoints" / "examples").rglob("state.npz")), "checkpoint")
        proc.kill()
        proc.wait(timeout=30)
        assert proc.returncode == -9 and not list(cache.rglob("meta.json"))

        # phase 2: resumed, then killed with 40 labels written and 4 requests held open
        fake.block_after = fake.answered + 40
        proc = subprocess.Popen(command(tiny_fixture, corpus, fake.url), env={**env(cache), "PYTHONUNBUFFERED": "1"},
                                stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        labels = lambda: list(cache.rglob("labels.jsonl"))  # noqa: E731
        wait_for(proc, lambda: labels() and labels()[0].read_text().count("\n") >= 40 and fake.active == 4,
                 "40 labels")
        proc.kill()
        out = proc.communicate(timeout=30)[0]
        resumed_at = int(out.split("resumed at sample ")[1].split()[0].rstrip(")"))
        assert resumed_at in (51, 102)
        (labels_file,) = labels()
        with open(labels_file, "ab") as fh:  # as if killed in the middle of a line
            fh.write(b'{"index": 999, "label": "tor')

        fake.block_after = None
        again = subprocess.run(command(tiny_fixture, corpus, fake.url), env=env(cache), capture_output=True,
                               text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert "up to date" in again.stdout  # the examples of the killed second run were finished
        rows = [json.loads(x) for x in labels_file.read_text().splitlines()]
        indices = [r["index"] for r in rows]
        assert sorted(indices) == list(range(100))  # every feature once: nothing lost, nothing twice
        assert "60 labelled now, 40 already there" in again.stdout
        got = arrays(cache)
        assert set(got) == set(reference)
        for k in reference:
            np.testing.assert_array_equal(got[k], reference[k], err_msg=k)
    finally:
        fake.stop()
