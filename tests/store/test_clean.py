"""``neuroscope clean``: every target moves its data into a trash entry (never the Hugging Face cache), ``show``
lists the trash, ``undo`` restores byte-identically without overwriting anything new, ``empty`` asks first;
moves across filesystems copy, verify and delete."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neuroscope.cli import serve as cli
from neuroscope.store import clean, paths, trash
from neuroscope.store.paths import Namespace
from tests.support.cli import error_line

NS = Namespace.for_hub_sae("google/gemma-2-2b-it", "google/gemma-scope-2b-pt-res", "layer_20/params.npz", 20)
LABELER = "deepseek/deepseek-v3.2"


def run(*args: str, input: str | None = None):
    result = CliRunner().invoke(cli.app, ["clean", *args], env={"COLUMNS": "200"}, input=input)
    assert "Traceback" not in result.output, result.output
    return result


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    hub = tmp_path / "hf" / "hub"
    blob = put(hub / "models--google--gemma-2-2b-it" / "blobs" / "abc", b"weights")
    snap = hub / "models--google--gemma-2-2b-it" / "snapshots" / "0123" / "model.safetensors"
    snap.parent.mkdir(parents=True)
    snap.symlink_to(blob)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    return hub


@pytest.fixture
def filled(cache, hf_cache) -> dict[str, list[Path]]:
    """Data of every kind, by the clean target that owns it."""
    return {
        "corpus": [put(paths.corpus_dir("wikitext", "wikitext-103-raw-v1", "train") / "000000.txt", b"text\n"),
                   put(paths.corpus_dir("wikitext", "wikitext-103-raw-v1", "train") / "manifest.json", b"{}")],
        "checkpoints": [put(paths.checkpoint_dir("calibration", NS, "run1") / "state.npz", os.urandom(300)),
                        put(paths.checkpoint_dir("examples", NS, "run1") / "state.npz", os.urandom(200))],
        "labels": [put(paths.autointerp_labels_file(LABELER, NS), b'{"index": 1}\n'),
                   put(paths.autointerp_scores_file(LABELER, NS), b'{"index": 1, "score": 1}\n'),
                   put(paths.legacy_autointerp_labels_file(NS), b'{"1": "x"}'),
                   put(paths.examples_dir(NS, "run1") / "examples.jsonl", b"{}\n"),
                   put(paths.neuronpedia_file("gemma-2-2b", "20-gemmascope-res-16k"), b'{"index": 1}\n')],
        "calibration": [put(paths.calibration_file(NS), b'{"format": "x"}')],
        "compile": [put(paths.inductor_dir() / "fxgraph" / "ab" / "graph.py", b"# kernel"),
                    put(paths.inductor_dir() / "aotautograd" / "entry", os.urandom(100))],
    }


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "trash" not in p.relative_to(root).parts}


@pytest.mark.parametrize("what", ["corpus", "checkpoints", "labels", "calibration", "compile"])
def test_each_target_moves_only_its_data(filled, cache, hf_cache, what):
    hf_before = snapshot(hf_cache)
    before = snapshot(cache)
    result = run(what)
    assert result.exit_code == 0, result.output
    for p in filled[what]:
        assert not p.exists()
    for other, files in filled.items():
        if other != what:
            assert all(p.exists() for p in files), other
    size = sum(len(before[p.relative_to(cache).as_posix()]) for p in filled[what])
    assert f"{size} bytes" in result.stdout and "to the trash" in result.stdout
    entry = trash.entries()[0]
    assert entry.what == what and entry.size == size
    manifest = json.loads((entry.path / trash.MANIFEST).read_text())
    assert all(Path(i["original"]).is_relative_to(cache) and i["moved"] for i in manifest["items"])
    assert snapshot(hf_cache) == hf_before
    for name in clean.TARGETS[what]:  # the roots stay (a symlinked one keeps its link); their contents moved
        root = paths.data_roots()[name]
        assert root.is_dir() and list(root.iterdir()) == []


def test_clean_all_then_undo_restores_byte_identical(filled, cache, hf_cache):
    before = snapshot(cache)
    hf_before = snapshot(hf_cache)
    assert run("all").exit_code == 0
    assert snapshot(cache) == {}
    assert len(trash.entries()) == 1
    result = run("undo")
    assert result.exit_code == 0, result.output
    assert snapshot(cache) == before
    assert snapshot(hf_cache) == hf_before
    assert trash.entries() == []


def test_undo_takes_the_newest_entry_first(filled, cache):
    before = snapshot(cache)
    run("calibration")
    run("labels")
    assert [e.what for e in trash.entries()] == ["labels", "calibration"]
    show = run("show")
    assert show.exit_code == 0
    assert show.stdout.index("labels") < show.stdout.index("calibration") and "2 entries" in show.stdout
    run("undo")
    assert all(p.exists() for p in filled["labels"]) and not paths.calibration_file(NS).exists()
    run("undo")
    assert snapshot(cache) == before


def test_undo_refuses_to_overwrite_what_was_made_since(filled, cache):
    run("calibration")
    put(paths.calibration_file(NS), b"new calibration")
    result = run("undo")
    line = error_line(result)
    assert result.exit_code == 1 and "nothing was restored" in line
    assert f"{paths.calibration_file(NS)} would be overwritten" in line  # the very file, named
    assert paths.calibration_file(NS).read_bytes() == b"new calibration"
    assert len(trash.entries()) == 1  # still there to restore once the new data is moved away


def test_undo_restores_file_by_file_into_directories_made_since(filled, cache):
    """An empty directory at the original path, or one holding other files (another layer's calibration), is
    merged into: only a file that would be overwritten refuses the undo."""
    before = snapshot(cache)
    run("calibration")
    paths.calibration_file(NS).parent.mkdir(parents=True)  # an empty directory where the calibration was
    other = NS.__class__.for_hub_sae("google/gemma-2-2b-it", "google/gemma-scope-2b-pt-res", "layer_12/params.npz", 12)
    newer = put(paths.calibration_file(other), b"another layer")
    result = run("undo")
    assert result.exit_code == 0, result.output
    assert snapshot(cache) == {**before, newer.relative_to(cache).as_posix(): b"another layer"}
    assert trash.entries() == []


def test_nothing_to_clean_and_nothing_to_undo(cache):
    result = run("labels")
    assert result.exit_code == 0 and "nothing to clean" in result.stdout
    result = run("undo")
    assert result.exit_code == 0 and "nothing to undo" in result.stdout
    assert run("show").stdout.strip() == "the trash is empty"


def test_a_user_corpus_path_is_never_cleaned(cache, tmp_path):
    mine = put(tmp_path / "my-corpus" / "a.txt", b"mine")
    assert "nothing to clean" in run("corpus").stdout
    assert mine.read_bytes() == b"mine"


def test_empty_without_a_terminal_needs_yes(filled, cache):
    run("all")
    result = run("empty")
    assert result.exit_code == 1 and "--yes" in error_line(result)
    assert len(trash.entries()) == 1
    result = run("empty", "--yes")
    assert result.exit_code == 0 and "deleted 1 trash entry" in result.stdout
    assert trash.entries() == [] and not any(paths.trash_dir().iterdir())
    assert run("empty").stdout.strip() == "the trash is empty"


def test_empty_asks_on_a_terminal(filled, cache, monkeypatch):
    import neuroscope.cli.clean as cli_clean

    run("all")
    monkeypatch.setattr(cli_clean, "_interactive", lambda: True)
    result = run("empty", input="n\n")
    assert result.exit_code == 1 and "permanently?" in result.output and "nothing deleted" in result.stdout
    assert len(trash.entries()) == 1
    result = run("empty", input="y\n")
    assert result.exit_code == 0 and "deleted 1 trash entry" in result.stdout
    assert trash.entries() == []


def test_a_data_dir_on_another_filesystem_is_copied_verified_and_deleted(filled, cache, tmp_path, monkeypatch):
    # the labels root is a symlink elsewhere; renames across it fail with EXDEV as on two filesystems
    elsewhere = tmp_path / "other-disk" / "autointerp_labels"
    os.rename(paths.autointerp_root(), elsewhere.parent.mkdir(parents=True) or elsewhere)
    paths.autointerp_root().symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(cache.parent / "other-disk")
    real_rename = os.rename
    crossed = []

    def rename(src, dst):
        def other_disk(p) -> bool:
            return Path(p).parent.resolve().is_relative_to(elsewhere.parent)

        if other_disk(src) != other_disk(dst):
            crossed.append(src)
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    assert run("labels").exit_code == 0
    assert len(crossed) == 2  # the two labelers' trees (examples and neuronpedia are on the cache's disk)
    assert paths.autointerp_root().is_symlink() and list(elsewhere.iterdir()) == []
    entry = trash.entries()[0]
    assert all(entry.stored(i).exists() and not entry.stored(i).is_symlink() for i in range(len(entry.items)))
    assert run("undo").exit_code == 0
    assert snapshot(cache.parent / "other-disk") == before
    assert not list(paths.trash_dir().iterdir())


def test_a_copy_that_does_not_verify_leaves_the_original(cache, tmp_path, monkeypatch):
    src = put(tmp_path / "a" / "x.bin", b"abc")
    monkeypatch.setattr(os, "rename", lambda s, d: (_ for _ in ()).throw(OSError(errno.EXDEV, "cross-device")))
    copy = shutil.copy2

    def corrupting_copy(src, dst, **kwargs):  # a copy that lands damaged (a failing disk, a full one)
        copy(src, dst, **kwargs)
        Path(dst).write_bytes(b"abd")

    monkeypatch.setattr(shutil, "copy2", corrupting_copy)
    with pytest.raises(OSError, match="differs"):
        trash.move(src, tmp_path / "b" / "x.bin")
    assert src.read_bytes() == b"abc" and not (tmp_path / "b" / "x.bin").exists()
    assert list((tmp_path / "b").iterdir()) == []


def test_undo_after_a_move_interrupted_before_the_manifest_caught_up(filled, cache):
    before = snapshot(cache)
    entry = trash.trash("calibration", [paths.calibration_root() / "google__gemma-2-2b-it"])
    data = json.loads((entry.path / trash.MANIFEST).read_text())
    data["items"][0]["moved"] = False  # as if killed right after the rename
    (entry.path / trash.MANIFEST).write_text(json.dumps(data))
    assert run("undo").exit_code == 0
    assert snapshot(cache) == before


def test_undo_after_a_copy_interrupted_before_the_source_was_deleted(filled, cache):
    before = snapshot(cache)
    src = paths.calibration_root() / "google__gemma-2-2b-it"
    entry = trash.new_entry("calibration")
    import shutil

    shutil.copytree(src, entry.stored(0))
    entry.items.append(trash.Item(original=str(src), size=trash.tree_size(src), kind="dir"))
    entry.save()
    assert run("undo").exit_code == 0  # the source is whole: the copy is dropped, nothing is overwritten
    assert snapshot(cache) == before and trash.entries() == []


def test_a_hugging_face_cache_inside_a_data_dir_is_left_alone(cache, monkeypatch):
    from huggingface_hub import constants

    hub = paths.corpus_root() / "hf-hub"
    put(hub / "models--a--b" / "refs" / "main", b"0123")
    mine = put(paths.corpus_dir("wikitext", "c", "train") / "000000.txt", b"text")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    assert run("corpus").exit_code == 0
    assert not mine.exists() and (hub / "models--a--b" / "refs" / "main").read_bytes() == b"0123"
