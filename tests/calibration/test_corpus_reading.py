"""Reading a corpus directory (``--corpus-path``): any .txt files, recursive, in path order; atomic writes."""

from __future__ import annotations

import os

import pytest

from neuroscope.calibration.corpus import CorpusError, iter_corpus
from neuroscope.store import atomic


def write(root, rel, text, encoding="utf-8"):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return p


def test_reads_txt_files_recursively_sorted_by_path(tmp_path):
    write(tmp_path, "b.txt", "bee\n")
    write(tmp_path, "a/z.txt", "zed")
    write(tmp_path, "a/b/c.txt", "deep")
    write(tmp_path, "a-c.txt", "dash")
    write(tmp_path, "10.txt", "ten")
    write(tmp_path, "9.txt", "nine")
    got = [(s.name, s.text) for s in iter_corpus(tmp_path)]
    # component by component: the "a" directory's files come together, before "a-c.txt"
    assert got == [("10.txt", "ten"), ("9.txt", "nine"), ("a/b/c.txt", "deep"), ("a/z.txt", "zed"),
                   ("a-c.txt", "dash"), ("b.txt", "bee")]


def test_skips_other_files_hidden_ones_and_empty_ones(tmp_path):
    write(tmp_path, "keep.txt", "  kept text \n\n")
    write(tmp_path, "notes.md", "not text for the corpus")
    write(tmp_path, "manifest.json", "{}")
    write(tmp_path, ".000001.txt.123.tmp", "a leftover temporary file")
    write(tmp_path, ".hidden.txt", "hidden")
    write(tmp_path, ".git/x.txt", "inside a hidden folder")
    write(tmp_path, "empty.txt", "\n  \n")
    assert [(s.name, s.text) for s in iter_corpus(tmp_path)] == [("keep.txt", "  kept text")]


def test_unicode_is_kept_and_bad_bytes_are_one_clear_error(tmp_path):
    write(tmp_path, "a.txt", "戦場のヴァルキュリア — naïve")
    assert next(iter_corpus(tmp_path)).text == "戦場のヴァルキュリア — naïve"
    write(tmp_path, "b.txt", "caf\xe9", encoding="latin-1")
    with pytest.raises(CorpusError) as info:
        list(iter_corpus(tmp_path))
    assert "b.txt" in str(info.value) and "UTF-8" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("make, message", [(lambda p: None, "not found"), (lambda p: p.mkdir(), "no .txt files")])
def test_missing_or_empty_directory(tmp_path, make, message):
    make(tmp_path / "c")
    with pytest.raises(CorpusError, match=message):
        list(iter_corpus(tmp_path / "c"))


def test_atomic_write_replaces_whole_files_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "f.txt"
    atomic.write_bytes(target, b"one")
    atomic.write_bytes(target, b"two")
    atomic.write_json(tmp_path / "m.json", {"b": 1, "a": "é"})
    assert target.read_bytes() == b"two"
    assert (tmp_path / "m.json").read_text(encoding="utf-8") == '{\n  "a": "é",\n  "b": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt", "m.json"]


def test_stale_temporary_files_of_live_writers_are_kept(tmp_path):
    mine = write(tmp_path, f".x.txt.{os.getpid()}.tmp", "being written")
    dead = write(tmp_path, ".y.txt.999999999.tmp", "left by a killed writer")
    other = write(tmp_path, "z.txt", "a sample")
    assert atomic.remove_stale_tmp(tmp_path) == 1
    assert mine.exists() and other.exists() and not dead.exists()
