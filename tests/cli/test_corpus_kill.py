"""A ``corpus build`` killed with SIGKILL leaves only whole samples, and re-running it gives the same corpus as an
uninterrupted build. Real subprocesses, a real ``HF_ENDPOINT``, a fake hub that can hold a download open."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support import wikitext_data as wt
from tests.support.fake_hub import FakeHub, subprocess_env

SAMPLE = re.compile(r"^\d{6}\.txt$")


def build(env, out: Path, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "neuroscope", "corpus", "build", "--output", str(out), *extra]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def big_hub():
    hub = FakeHub()
    wt.add_to(hub, big=True)
    hub.start()
    yield hub
    hub.stop()


def test_killed_mid_build_then_rerun_equals_an_uninterrupted_build(big_hub, tmp_path):
    env = subprocess_env(big_hub.endpoint, tmp_path)
    ref = tmp_path / "reference"
    done = build(env, ref)
    assert done.returncode == 0, done.stderr
    reference = tree(ref)
    assert len(reference) > 300

    # a fresh hub cache, and the second parquet file's download held open after its first bytes
    env = subprocess_env(big_hub.endpoint, tmp_path / "second")
    release = big_hub.hold(wt.REPO, wt.FILES[1])
    second_sha = hashlib.sha256(big_hub.repos[wt.REPO][wt.FILES[1]]).hexdigest()
    out = tmp_path / "out"
    before = len(big_hub.requests("GET", f"/cdn/{second_sha}"))  # the reference build's download
    proc = build(env, out, wait=False)

    # watch the directory while it is written: every visible sample must already be whole and final
    seen, bad, stop = set(), [], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if out.is_dir():
                for p in out.iterdir():
                    if SAMPLE.match(p.name):
                        data = p.read_bytes()
                        seen.add(p.name)
                        if data != reference.get(p.name):
                            bad.append((p.name, len(data)))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    deadline = time.monotonic() + 60
    while len(big_hub.requests("GET", f"/cdn/{second_sha}")) == before:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the build never reached the second file"
        time.sleep(0.01)
    time.sleep(0.2)  # it is now blocked inside the second download
    proc.kill()
    proc.wait(timeout=30)
    stop.set()
    watcher.join()
    assert proc.returncode == -9

    left = tree(out)
    samples = sorted(n for n in left if SAMPLE.match(n))
    assert "manifest.json" not in left  # the build is visibly unfinished
    assert len(samples) > 100 and samples == sorted(n for n in reference if SAMPLE.match(n))[: len(samples)]
    assert all(left[n] == reference[n] for n in samples)
    assert seen and not bad, bad[:5]

    release.set()
    again = build(env, out)
    assert again.returncode == 0, again.stderr
    assert tree(out) == reference  # same files, same manifest and checksum; no temporary or marker file left


KILL_IN_FSYNC = """
import os, sys, time
from neuroscope.store import atomic

def slow_fsync(fd):  # a very slow disk: the new bytes are written, not yet in place
    print("syncing", flush=True)
    time.sleep(60)

os.fsync = slow_fsync
atomic.write_bytes(sys.argv[1], "new text\\n".encode() * 1000)
"""


def test_a_sample_killed_while_being_written_never_shows(tmp_path):
    from neuroscope.calibration import corpus
    from neuroscope.store import atomic

    target = tmp_path / "000000.txt"
    target.write_text("old text\n")
    proc = subprocess.Popen([sys.executable, "-c", KILL_IN_FSYNC, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "syncing"
    proc.kill()
    proc.wait(timeout=30)

    assert target.read_text() == "old text\n"
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert leftovers == [f".000000.txt.{proc.pid}.tmp"]
    assert [s.text for s in corpus.iter_corpus(tmp_path)] == ["old text"]  # a reader never sees the leftover
    assert atomic.remove_stale_tmp(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["000000.txt"]
