"""``neuroscope corpus build | show`` through the real huggingface_hub download path, against a loopback fake hub."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neuroscope.calibration import corpus
from neuroscope.calibration.wikitext import samples
from neuroscope.cli import serve as cli
from neuroscope.store.hf import hub_reachable
from tests.support import wikitext_data as wt
from tests.support.cli import error_line
from tests.support.fake_hub import COMMIT, FakeHub, point_in_process, refused_endpoint

SAMPLE = re.compile(r"^\d{6}\.txt$")
ALL = len(list(samples(wt.rows())))  # every sample the fake dataset holds


@pytest.fixture
def hub(tmp_path, monkeypatch, cache):
    fake = FakeHub()
    wt.add_to(fake)
    fake.start()
    point_in_process(monkeypatch, fake.endpoint, tmp_path / "hf")
    yield fake
    fake.stop()
    hub_reachable.cache_clear()


@pytest.fixture
def offline(tmp_path, monkeypatch, cache):
    point_in_process(monkeypatch, refused_endpoint(), tmp_path / "hf-offline")
    yield
    hub_reachable.cache_clear()


def run(*args: str):
    result = CliRunner().invoke(cli.app, ["corpus", *args], env={"COLUMNS": "200"})
    assert "Traceback" not in result.output
    return result


def samples_in(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if SAMPLE.match(p.name)}


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def default_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "corpus" / "wikitext" / "wikitext-103-raw-v1" / "train"


# ------------------------------------------------------------------------------------------------ build
def test_build_writes_one_text_file_per_sample_and_a_manifest(hub, tmp_path):
    result = run("build", "--samples", "12")
    assert result.exit_code == 0, result.output
    out = default_dir(tmp_path)
    files = samples_in(out)
    assert list(files) == [f"{i:06d}.txt" for i in range(12)]
    texts = [data.decode("utf-8") for data in files.values()]
    assert texts[0].startswith("Senjō no Valkyria 3 : Unrecorded Chronicles")
    assert all(t.endswith("\n") and t.strip() for t in texts)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == {"repo": "Salesforce/wikitext", "config": "wikitext-103-raw-v1", "split": "train",
                                  "files": wt.FILES, "revisions": [COMMIT]}
    assert manifest["plan"]["samples"] == 12
    assert manifest["plan"]["sample_options"] == {"target_chars": 1500, "max_chars": 2000, "min_chars": 200}
    assert manifest["counts"]["samples"] == 12 and manifest["counts"]["exhausted"] is False
    assert manifest["total_chars"] == sum(len(t.rstrip("\n")) for t in texts)
    h = hashlib.sha256()
    for name, data in files.items():  # the documented checksum: name, length and bytes of each file, in order
        h.update(f"{name}\0{len(data)}\0".encode() + data)
    assert manifest["checksum"] == "sha256:" + h.hexdigest()
    assert "built: 12 samples" in result.stdout and str(out) in result.stdout
    assert not (out / ".building.json").exists()


def test_samples_are_clean_text_of_one_article_each(hub, tmp_path):
    assert run("build").exit_code == 0
    texts = [d.decode() for d in samples_in(default_dir(tmp_path)).values()]
    joined = "\n".join(texts)
    for artefact in ("@-@", "@,@", "@.@"):
        assert artefact not in joined
    assert "tactical role-playing video game" in joined and "1,250 crowns" in joined and "3.5 metres" in joined
    assert not re.search(r"^ ?= .* = ?$", joined, re.M), "a title or heading line was kept"
    for text in texts:
        assert len({m for m in wt.MARKERS if f"{m} p" in text} | ({"Valkyria"} if "Senjō" in text else set())) == 1
    # Barker's article spans the two parquet files and is still joined in order
    assert any("Barker p2 " in t and "Barker p3 " in t for t in texts)


def test_two_builds_are_byte_identical(hub, tmp_path):
    assert run("build", "--output", str(tmp_path / "a")).exit_code == 0
    assert run("build", "--output", str(tmp_path / "b")).exit_code == 0
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert a == b and len(a) == ALL + 1  # every sample + manifest.json


def test_a_second_build_is_up_to_date_and_downloads_nothing(hub, tmp_path):
    assert run("build", "--samples", "5").exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in default_dir(tmp_path).iterdir()}
    seen = len(hub.log)
    result = run("build", "--samples", "5")
    assert result.exit_code == 0 and result.stdout.startswith("up to date: 5 samples")
    assert hub.log[seen:] == []
    assert {p: p.stat().st_mtime_ns for p in default_dir(tmp_path).iterdir()} == before


def test_more_then_fewer_samples(hub, tmp_path):
    assert run("build", "--samples", "4").exit_code == 0
    first = samples_in(default_dir(tmp_path))
    assert run("build", "--samples", "10").exit_code == 0
    grown = samples_in(default_dir(tmp_path))
    assert len(grown) == 10 and {k: grown[k] for k in first} == first  # the same first samples
    assert run("build", "--samples", "3").exit_code == 0
    shrunk = samples_in(default_dir(tmp_path))
    assert list(shrunk) == list(first)[:3]
    assert corpus.read_manifest(default_dir(tmp_path))["checksum"] == corpus.checksum(
        sorted(default_dir(tmp_path).glob("*.txt")))


def test_asking_for_more_than_the_split_holds_says_so(hub, tmp_path):
    result = run("build", "--samples", "500")
    assert result.exit_code == 0
    assert f"holds only {ALL} samples (500 asked)" in result.stderr
    assert corpus.read_manifest(default_dir(tmp_path))["counts"] == {"samples": ALL, "articles": 7, "exhausted": True}


def test_other_configs_are_found_by_listing_the_repo(hub, tmp_path):
    hub.fail(r"^/api/datasets/.*/tree/", 500)  # the listing fails once; huggingface_hub retries it
    result = run("build", "--config", "wikitext-2-raw-v1", "--split", "test", "--samples", "2")
    assert result.exit_code == 0, result.output
    out = tmp_path / "cache" / "corpus" / "wikitext" / "wikitext-2-raw-v1" / "test"
    assert corpus.read_manifest(out)["source"]["files"] == ["wikitext-2-raw-v1/test-00000-of-00001.parquet"]
    assert len(samples_in(out)) == 2
    assert [s for _, p, s in hub.requests("GET", "/tree/")] == [500, 200]


def test_an_unknown_config_names_the_ones_there_are(hub, tmp_path):
    result = run("build", "--config", "wikitext-3", "--samples", "2")
    assert result.exit_code == 1
    line = error_line(result)
    assert "wikitext-3/train" in line and "wikitext-103-raw-v1/train" in line and "wikitext-2-raw-v1/test" in line
    assert not (tmp_path / "cache" / "corpus" / "wikitext" / "wikitext-3").exists()


# ------------------------------------------------------------------------------------------------ faults
def test_server_errors_are_retried(hub, tmp_path):
    hub.fail(r"/resolve/main/.*train-00000", 500, method="HEAD")
    hub.fail(r"^/cdn/", 500, method="GET")
    result = run("build", "--output", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert ("HEAD", 500) in [(m, s) for m, _, s in hub.requests(contains="train-00000")]
    assert ("GET", 500) in [(m, s) for m, _, s in hub.requests(contains="/cdn/")]
    assert run("build", "--output", str(tmp_path / "clean")).exit_code == 0
    assert tree(tmp_path / "out") == tree(tmp_path / "clean")


def test_a_missing_file_is_a_clear_error_and_a_rerun_finishes_the_job(hub, tmp_path):
    out = tmp_path / "out"
    second = hub.repos[wt.REPO].pop(wt.FILES[1])
    result = run("build", "--output", str(out))
    assert result.exit_code == 1
    line = error_line(result)
    assert wt.FILES[1] in line and "no such file" in line
    assert not (out / "manifest.json").exists()
    partial = samples_in(out)
    assert partial  # the first file's samples were written, whole

    hub.add_file(wt.REPO, wt.FILES[1], second)
    assert run("build", "--output", str(out)).exit_code == 0
    assert run("build", "--output", str(tmp_path / "clean")).exit_code == 0
    assert tree(out) == tree(tmp_path / "clean")
    assert {k: v for k, v in samples_in(out).items() if k in partial} == partial


def test_an_unknown_dataset_is_a_clear_error(hub):
    result = run("build", "--dataset", "nobody/nothing", "--config", "c")
    assert result.exit_code == 1
    assert "nobody/nothing" in error_line(result) and "no such dataset" in error_line(result)


def test_a_persistent_server_error_is_one_line(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "RETRY_WAIT_S", 0.01)
    hub.fail(r"^/cdn/", 503, times=100)
    result = run("build", "--output", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "HTTP 503" in error_line(result)


def test_offline_build_says_what_to_do(offline, tmp_path):
    result = run("build")
    assert result.exit_code == 1
    line = error_line(result)
    assert "unreachable" in line and "neuroscope corpus build` again when online" in line
    assert "pass --corpus-path" not in line  # corpus build has no such option: the commands that do are named
    assert "`calibrate run` and `labels generate` also read a directory of .txt files" in line


def test_offline_build_uses_the_hub_cache(hub, tmp_path, monkeypatch):
    assert run("build", "--output", str(tmp_path / "online")).exit_code == 0
    from huggingface_hub import constants

    point_in_process(monkeypatch, refused_endpoint(), constants.HF_HUB_CACHE)  # same hub cache, no network
    assert not hub_reachable()
    assert run("build", "--output", str(tmp_path / "offline")).exit_code == 0
    assert tree(tmp_path / "offline") == tree(tmp_path / "online")


def test_refuses_to_write_into_a_directory_that_is_not_a_corpus(hub, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run("build", "--output", str(out))
    assert result.exit_code == 1 and "not empty" in error_line(result)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_bad_samples_flag_exits_2(hub):
    assert run("build", "--samples", "0").exit_code == 2


# ------------------------------------------------------------------------------------------------ show
def test_show_counts_characters_and_previews(hub, tmp_path):
    assert run("build", "--samples", "6").exit_code == 0
    texts = [d.decode().rstrip() for d in samples_in(default_dir(tmp_path)).values()]
    result = run("show")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.search(r"samples\s+6\b", out)
    assert re.search(rf"characters\s+{sum(map(len, texts)):,}\b", out)
    assert "Salesforce/wikitext wikitext-103-raw-v1/train" in out and "matches the manifest" in out
    assert "000000.txt" in out and "Senjō no Valkyria 3 : Unrecorded" in out
    assert "000002.txt" in out and "000003.txt" not in out  # three previews by default

    (default_dir(tmp_path) / "000001.txt").write_text("edited\n")
    assert "differs from the manifest" in run("show").stdout


def test_show_reads_any_directory_of_text_files(tmp_path):
    (tmp_path / "mine" / "b").mkdir(parents=True)
    (tmp_path / "mine" / "b" / "z.txt").write_text("zulu text\n")
    (tmp_path / "mine" / "a.txt").write_text("alpha text\n")
    result = run("show", "--path", str(tmp_path / "mine"), "--previews", "5")
    assert result.exit_code == 0, result.output
    assert re.search(r"samples\s+2\b", result.stdout) and re.search(r"characters\s+19\b", result.stdout)
    assert result.stdout.index("a.txt") < result.stdout.index("b/z.txt")
    assert "manifest" not in result.stdout


def test_show_without_a_corpus_says_how_to_build_one(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROSCOPE_CACHE", str(tmp_path / "empty-cache"))
    result = run("show")
    assert result.exit_code == 1
    assert "neuroscope corpus build" in error_line(result)
    result = run("show", "--path", str(tmp_path / "nowhere"))
    assert result.exit_code == 1 and "nowhere" in error_line(result)


# ------------------------------------------------------------------------------------------------ ensure_corpus
def test_ensure_corpus_builds_the_default_once(hub, tmp_path):
    path = corpus.ensure_corpus(samples_wanted=5)
    assert path == default_dir(tmp_path) and corpus.read_manifest(path) is not None
    seen = len(hub.log)
    assert corpus.ensure_corpus(samples_wanted=5) == path
    assert hub.log[seen:] == []


def test_ensure_corpus_offline_without_a_corpus_says_what_to_do(offline):
    with pytest.raises(corpus.CorpusError) as info:
        corpus.ensure_corpus()
    message = str(info.value)
    assert "\n" not in message
    assert "--corpus-path" in message and "neuroscope corpus build" in message and "unreachable" in message


def test_ensure_corpus_prefers_the_given_path(offline, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.txt").write_text("some text")
    assert corpus.ensure_corpus(tmp_path / "mine") == tmp_path / "mine"
    (tmp_path / "empty").mkdir()
    with pytest.raises(corpus.CorpusError, match="no .txt files"):
        corpus.ensure_corpus(tmp_path / "empty")
    with pytest.raises(corpus.CorpusError, match="not found"):
        corpus.ensure_corpus(tmp_path / "missing")


def test_a_terminal_sees_download_and_sample_progress(hub, tmp_path):
    import io

    from rich.console import Console

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=150, color_system=None)
    corpus.build_corpus(tmp_path / "out", samples_wanted=12, console=console)
    shown = screen.getvalue()
    size = len(hub.repos[wt.REPO][wt.FILES[0]])
    assert "download train-00000-of-00002.parquet" in shown and f"{size / 1000:.1f} kB/{size / 1000:.1f} kB" in shown
    assert "write samples" in shown and "12/12" in shown
