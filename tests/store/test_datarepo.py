"""``neuroscope push`` / ``pull`` through the real huggingface_hub code paths against the loopback fake hub:
one commit with a manifest, every checksum verified before anything is installed, differing local files to the
trash, and ``serve`` right after a pull filtering with the pulled calibration."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from neuroscope.calibration.stats import Accumulator, identity
from neuroscope.cli import serve as cli
from neuroscope.core.protocol import BatchStats
from neuroscope.store import datarepo, paths
from neuroscope.store.paths import Namespace
from tests.support.cli import error_line
from tests.support.hub_fixtures import READ_TOKEN, WRITE_TOKEN

REPO = "alice/neuroscope-data"
HUB_NS = Namespace.for_hub_sae("google/gemma-2-2b-it", "google/gemma-scope-2b-pt-res",
                               "layer_20/width_16k/average_l0_71/params.npz", 20)
LABELER = "deepseek/deepseek-v3.2"


def run(*args: str, env: dict | None = None):
    result = CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "200", **(env or {})})
    assert "Traceback" not in result.output, result.output
    return result


def calibration_json(ns: Namespace, d_sae: int = 8, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    acc = Accumulator(d_sae)
    count = rng.integers(0, 10, d_sae).astype(float)
    acc.add(BatchStats(10, count=count, sum=count * 2.0, m2=count, max=count + 1.0), samples=1)
    return json.dumps(acc.to_json(identity(ns, d_sae)))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def fill(ns: Namespace = HUB_NS) -> dict[Path, bytes]:
    """One file of every kind push shares, for ``ns``; returns path -> bytes."""
    files = [
        write(paths.calibration_file(ns), calibration_json(ns)),
        write(paths.autointerp_labels_file(LABELER, ns), '{"index": 1, "label": "rivers"}\n'),
        write(paths.autointerp_scores_file(LABELER, ns), '{"index": 1, "score": 0.8}\n'),
        write(paths.autointerp_failed_file(LABELER, ns), '{"index": 2, "error": "timeout"}\n'),
        write(paths.autointerp_dead_file(LABELER, ns), "[3, 4]\n"),
        write(paths.autointerp_labels_file("anthropic/claude", ns), '{"index": 1, "label": "water"}\n'),
        write(paths.legacy_autointerp_labels_file(ns), '{"1": "old label"}\n'),
        write(paths.neuronpedia_file("gemma-2-2b", "20-gemmascope-res-16k"), '{"index": 1, "label": "x"}\n'),
    ]
    return {p: p.read_bytes() for p in files}


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ push
def test_push_uploads_every_file_and_a_manifest_in_one_commit(hub, cache, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    files = fill()
    write(cache / "examples" / "x" / "run" / "examples.jsonl", "not pushed\n")
    result = run("push", "--repo", REPO, "--message", "first")
    assert result.exit_code == 0, result.output
    assert "pushed 8 file(s)" in result.stdout and REPO in result.stdout
    assert len(hub.commits) == 1 and hub.commits[0]["summary"] == "first"
    assert hub.requests("POST", "/api/repos/create") and hub.requests("POST", "/preupload/")
    uploaded = hub.repos[REPO]
    want = {p.relative_to(cache).as_posix(): data for p, data in files.items()}
    manifest = json.loads(uploaded.pop("manifest.json"))
    assert uploaded == want
    assert manifest["format"] == "neuroscope-data/1" and manifest["neuroscope_version"]
    entries = {e["path"]: e for e in manifest["files"]}
    assert set(entries) == set(want)
    for path, data in want.items():
        assert entries[path]["size"] == len(data) and entries[path]["sha256"] == hashlib.sha256(data).hexdigest()
    cal = entries[paths.calibration_file(HUB_NS).relative_to(cache).as_posix()]
    assert cal["kind"] == "calibration" and cal["namespace"] == HUB_NS.as_dict()
    labels = entries[paths.autointerp_labels_file(LABELER, HUB_NS).relative_to(cache).as_posix()]
    assert labels["kind"] == "labels" and labels["namespace"] == {**HUB_NS.as_dict(), "labeler": LABELER}
    kinds = sorted(e["kind"] for e in manifest["files"])
    assert kinds == ["calibration", "dead", "failed", "labels", "labels", "legacy_labels", "neuronpedia", "scores"]
    np_entry = next(e for e in manifest["files"] if e["kind"] == "neuronpedia")
    assert np_entry["namespace"] == {"neuronpedia_model": "gemma-2-2b", "neuronpedia_source": "20-gemmascope-res-16k"}
    # a second push to the existing repo is one more commit (create_repo's 409 is fine)
    assert run("push", "--repo", REPO).exit_code == 0
    assert len(hub.commits) == 2


def test_push_sends_file_contents_base64_inline(hub, cache, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    fill()
    assert run("push", "--repo", REPO).exit_code == 0
    assert not hub.requests(contains="/cdn/")  # nothing went through LFS
    assert base64.b64encode(hub.repos[REPO]["manifest.json"])  # decoded by the fake from the NDJSON lines


@pytest.mark.parametrize("token, words", [
    (None, "needs a Hugging Face write token"),
    (READ_TOKEN, "cannot write (it is a read token)"),
    ("hf_not_a_token", "token is invalid"),
], ids=["none", "read-only", "invalid"])
def test_push_without_a_write_token_says_how_to_log_in(hub, cache, monkeypatch, token, words):
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    fill()
    line = error_line(run("push", "--repo", REPO))
    assert words in line and "hf auth login" in line and "HF_TOKEN" in line
    assert not hub.commits and REPO not in hub.repos


def test_a_fine_grained_token_with_write_permission_may_push(hub, cache, monkeypatch):
    hub.tokens["hf_fine"] = ("alice", "repo.content.read,repo.write")
    hub.tokens["hf_fine_ro"] = ("alice", "repo.content.read")
    monkeypatch.setenv("HF_TOKEN", "hf_fine_ro")
    fill()
    assert "fine-grained permissions" in error_line(run("push", "--repo", REPO))
    monkeypatch.setenv("HF_TOKEN", "hf_fine")
    assert run("push", "--repo", REPO).exit_code == 0


def test_push_with_nothing_to_push(hub, cache, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    assert "nothing to push" in error_line(run("push", "--repo", REPO))


def test_push_needs_a_repo(hub, cache, monkeypatch):
    monkeypatch.delenv("NEUROSCOPE_DATA_REPO", raising=False)
    result = run("push")
    assert result.exit_code == 2 and "--repo" in error_line(result)


# ------------------------------------------------------------------------------------------------ pull
def _published(hub, cache, monkeypatch, ns: Namespace = HUB_NS) -> dict[str, bytes]:
    """Push a full cache, then empty the local cache; returns what was pushed (cache-relative path -> bytes)."""
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    files = fill(ns)
    assert run("push", "--repo", REPO).exit_code == 0
    assert run("clean", "all").exit_code == 0
    assert not any(p.is_file() for p in cache.rglob("*") if "trash" not in p.parts)
    return {p.relative_to(cache).as_posix(): data for p, data in files.items()}


def _local(cache: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree(cache).items() if not k.startswith("trash/")}


def test_pull_installs_every_file_byte_identical(hub, cache, monkeypatch):
    pushed = _published(hub, cache, monkeypatch)
    monkeypatch.delenv("HF_TOKEN")
    result = run("pull", "--repo", REPO)
    assert result.exit_code == 0, result.output
    assert "8 new, 0 replaced, 0 already up to date" in result.stdout
    assert _local(cache) == pushed
    again = run("pull", "--repo", REPO)
    assert "0 new, 0 replaced, 8 already up to date" in again.stdout


def test_pull_default_repo_from_the_environment(hub, cache, monkeypatch):
    pushed = _published(hub, cache, monkeypatch)
    monkeypatch.setenv("NEUROSCOPE_DATA_REPO", REPO)
    assert run("pull").exit_code == 0
    assert _local(cache) == pushed


def test_pull_moves_differing_local_files_to_the_trash_and_undo_brings_them_back(hub, cache, monkeypatch):
    pushed = _published(hub, cache, monkeypatch)
    mine = paths.autointerp_labels_file(LABELER, HUB_NS)
    same = paths.autointerp_dead_file(LABELER, HUB_NS)
    write(mine, '{"index": 1, "label": "my own label"}\n')
    write(same, pushed[same.relative_to(cache).as_posix()].decode())
    result = run("pull", "--repo", REPO)
    assert result.exit_code == 0, result.output
    assert "6 new, 1 replaced, 1 already up to date" in result.stdout and "clean undo" in result.stdout
    assert _local(cache) == pushed
    undo = run("clean", "undo")
    assert undo.exit_code == 0, undo.output
    assert mine.read_text() == '{"index": 1, "label": "my own label"}\n'


def test_an_interrupted_install_finishes_on_the_next_pull(hub, cache, monkeypatch):
    pushed = _published(hub, cache, monkeypatch)
    checked = datarepo.verify(Path(_snapshot(hub)))
    real_replace = os.replace
    calls = []

    def dying_replace(src, dst):
        calls.append(dst)
        if len(calls) == 4:
            raise KeyboardInterrupt  # as a kill between two files: the rest stay staged
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        datarepo.install(checked)
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(_local(cache)) == 3 + 5  # three installed, five still staged (hidden temporary files)
    result = run("pull", "--repo", REPO)
    assert result.exit_code == 0, result.output
    assert "5 new, 0 replaced, 3 already up to date" in result.stdout
    assert _local(cache) == pushed  # no staged leftovers either


def _snapshot(hub) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(REPO, repo_type="dataset")


def test_a_tampered_file_installs_nothing(hub, cache, monkeypatch):
    pushed = _published(hub, cache, monkeypatch)
    victim = paths.autointerp_scores_file(LABELER, HUB_NS).relative_to(cache).as_posix()
    hub.repos[REPO][victim] = b'{"index": 1, "score": 1.0}\n'
    before = _local(cache)
    result = run("pull", "--repo", REPO)
    line = error_line(result)
    assert result.exit_code == 1 and "checksum mismatch" in line and victim in line and "nothing installed" in line
    assert _local(cache) == before == {}
    assert pushed  # (the repo held the rest, untouched)


@pytest.mark.parametrize("change, words", [
    (lambda m: m.update(format="neuroscope-data/99"), "unknown manifest format 'neuroscope-data/99'"),
    (lambda m: m["files"][0].update(path="../../etc/passwd"), "is not a valid file entry"),
    (lambda m: m["files"][0].update(path="calibration/x/calibration.json"), "is not where Neuroscope keeps"),
    (lambda m: next(e for e in m["files"] if e["kind"] == "calibration")["namespace"].update(layer=3),
     "does not match its namespace"),
], ids=["format", "escape", "layout", "namespace"])
def test_a_bad_manifest_installs_nothing(hub, cache, monkeypatch, change, words):
    _published(hub, cache, monkeypatch)
    manifest = json.loads(hub.repos[REPO]["manifest.json"])
    change(manifest)
    hub.repos[REPO]["manifest.json"] = json.dumps(manifest).encode()
    hub.heads[REPO] = "c" * 40  # a new commit: the hub cache's listing of the old one does not apply
    line = error_line(run("pull", "--repo", REPO))
    assert words in line and "nothing installed" in line
    assert _local(cache) == {}


def test_a_pull_killed_mid_download_installs_nothing_and_a_rerun_finishes(hub, cache, monkeypatch, tmp_path):
    import subprocess
    import sys
    import time

    from tests.support.fake_hub import subprocess_env

    hub.lfs_min_size = 500  # the calibration file goes through the CDN, where the fake can hold it open
    pushed = _published(hub, cache, monkeypatch)
    cal = paths.calibration_file(HUB_NS).relative_to(cache).as_posix()
    assert len(pushed[cal]) >= 500 > max(len(v) for k, v in pushed.items() if k != cal)
    release = hub.hold(REPO, cal)
    env = {**subprocess_env(hub.endpoint, tmp_path / "sub"), "NEUROSCOPE_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "neuroscope", "pull", "--repo", REPO]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sha = hashlib.sha256(pushed[cal]).hexdigest()
    deadline = time.monotonic() + 60
    while not hub.requests("GET", f"/cdn/{sha}"):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the pull never reached the calibration file"
        time.sleep(0.01)
    time.sleep(0.2)  # blocked inside that download
    proc.kill()
    proc.wait(timeout=30)
    assert _local(cache) == {}  # nothing is installed before everything is downloaded and verified
    release.set()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "8 new" in done.stdout
    assert _local(cache) == pushed


def test_pull_offline_installs_from_the_hub_cache(hub, cache, monkeypatch, tmp_path):
    from huggingface_hub import constants

    from neuroscope.store.hf import hub_reachable
    from tests.support.fake_hub import refused_endpoint

    pushed = _published(hub, cache, monkeypatch)
    assert run("pull", "--repo", REPO).exit_code == 0  # into the hub cache too
    assert run("clean", "all").exit_code == 0
    monkeypatch.setattr(constants, "ENDPOINT", refused_endpoint())
    hub_reachable.cache_clear()
    result = run("pull", "--repo", REPO)
    assert result.exit_code == 0, result.output
    assert _local(cache) == pushed
    line = error_line(run("pull", "--repo", "alice/never-pulled"))
    assert "unreachable" in line and "not in the hub cache" in line


def test_pull_of_a_missing_repo_is_one_line(hub, cache):
    line = error_line(run("pull", "--repo", "alice/nothing-here"))
    assert "no such dataset repo" in line
    # and what works without one
    assert "`neuroscope labels fetch`" in line and "`neuroscope calibrate run` and `neuroscope labels generate`" in line
    assert "`neuroscope push --repo ID`" in line


def test_pull_of_a_repo_without_a_manifest(hub, cache):
    hub.add_file("alice/other", "README.md", b"# data\n")
    assert "no manifest.json" in error_line(run("pull", "--repo", "alice/other"))


# ------------------------------------------------------------------------------------------------ round trip
def test_push_clean_pull_then_serve_filters_with_the_pulled_calibration(hub, cache, monkeypatch, tiny_fixture,
                                                                        tmp_path):
    from tests.support.process import start_serve

    ns = Namespace.for_local_sae(str(Path(tiny_fixture.model_dir).resolve()), tiny_fixture.sae_path,
                                 tiny_fixture.sae_layer)
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    files = fill(ns)
    write(paths.calibration_file(ns), calibration_json(ns, d_sae=256, seed=1))
    files[paths.calibration_file(ns)] = paths.calibration_file(ns).read_bytes()
    assert run("push", "--repo", REPO).exit_code == 0
    manifest = json.loads(hub.repos[REPO]["manifest.json"])
    cal_entry = next(e for e in manifest["files"] if e["kind"] == "calibration")
    assert cal_entry["namespace"] == ns.as_dict()  # the whole local-SAE hash and the model's path, from the file
    assert run("clean", "all").exit_code == 0
    assert run("pull", "--repo", REPO).exit_code == 0
    for path, data in files.items():
        assert path.read_bytes() == data, path
    srv = start_serve(tmp_path, "--model", str(tiny_fixture.model_dir), "--sae-local-path", str(tiny_fixture.sae_path),
                      "--sae-layer", str(tiny_fixture.sae_layer), "--backend", "torch-cpu", "--labeler", LABELER,
                      env={"NEUROSCOPE_CACHE": str(cache)})
    try:
        info = httpx.get(f"{srv.features}/v1/features/info", timeout=10).json()
        detail = httpx.get(f"{srv.features}/v1/features/labels?detail=true", timeout=10).json()
    finally:
        assert srv.stop() == 0
    assert info["filter"]["mode"] == "combined" and info["filter"]["warning"] is None
    assert info["filter"]["calibration"] == str(paths.calibration_file(ns))
    # the pulled labels are in the chain: the labeler's own before the legacy file
    assert detail["1"]["label"] == "rivers" and detail["1"]["source"] == "autointerp"
    assert info["labels"]["sources"]["autointerp"] == 1
