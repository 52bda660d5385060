"""The text corpus: WikiText downloaded from the Hugging Face hub as one ``.txt`` per sample, or any directory of
``.txt`` files (``--corpus-path``).

A built corpus directory holds ``000000.txt``, ``000001.txt``, … and a ``manifest.json`` written last: a
directory with a manifest is complete. Every file is written atomically, so a killed build leaves only whole
samples and re-running it finishes the job; the same options always give byte-identical files.
"""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from neuroscope import __version__
from neuroscope.calibration.wikitext import SampleOptions, samples
from neuroscope.progress import JobProgress
from neuroscope.store import atomic, paths
from neuroscope.store.hf import hub_failure, one_line

MANIFEST = "manifest.json"
BUILDING = ".building.json"  # present while a build runs (or after one was killed)
FORMAT = "neuroscope-corpus/1"
TEXT_COLUMN = "text"

DEFAULT_DATASET = "wikitext"
DEFAULT_CONFIG = "wikitext-103-raw-v1"
DEFAULT_SPLIT = "train"
DEFAULT_SAMPLES = 2000

DATASET_ALIASES = {"wikitext": "Salesforce/wikitext"}
# known shards, so the default corpus needs no repo listing (and builds offline from the hub cache)
KNOWN_FILES = {
    ("Salesforce/wikitext", "wikitext-103-raw-v1", "train"): (
        "wikitext-103-raw-v1/train-00000-of-00002.parquet",
        "wikitext-103-raw-v1/train-00001-of-00002.parquet",
    ),
}
DOWNLOAD_TRIES = 3
RETRY_WAIT_S = 1.0
_SAMPLE_NAME = re.compile(r"^(\d+)\.txt$")
_NAME_WIDTH = 6


class CorpusError(Exception):
    """A corpus problem a user can act on; the message is one line."""


def offline_hint() -> str:
    """For the commands that read a corpus (``calibrate run``, ``labels generate``)."""
    return "pass --corpus-path DIR (a directory of .txt files), or run `neuroscope corpus build` when online"


def build_offline_hint() -> str:
    """For ``corpus build`` itself, which has no --corpus-path."""
    return ("run `neuroscope corpus build` again when online (what it downloads stays in the hub cache); "
            "`calibrate run` and `labels generate` also read a directory of .txt files of your own (--corpus-path DIR)")


# ------------------------------------------------------------------------------------------------ datasets
def resolve_dataset(dataset: str) -> tuple[str, str]:
    """``(hub repo, directory name)``: ``wikitext`` and ``Salesforce/wikitext`` are the same dataset."""
    repo = DATASET_ALIASES.get(dataset, dataset)
    names = {v: k for k, v in DATASET_ALIASES.items()}
    return repo, names.get(repo, repo)


def default_dir(dataset: str = DEFAULT_DATASET, config: str = DEFAULT_CONFIG, split: str = DEFAULT_SPLIT) -> Path:
    return paths.corpus_dir(resolve_dataset(dataset)[1], config, split)


def _hub_failure(exc: BaseException, what: str) -> CorpusError:
    from huggingface_hub.errors import LocalEntryNotFoundError

    message = hub_failure(exc, what, kind="dataset")
    if isinstance(exc, LocalEntryNotFoundError):
        message += f"; {build_offline_hint()}"
    return CorpusError(message)


def _transient(exc: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        return exc.response is not None and exc.response.status_code >= 500
    return False


def _configs_in(files: list[str]) -> str:
    found = sorted({f"{f.split('/')[0]}/{f.split('/')[-1].split('-')[0]}" for f in files
                    if f.endswith(".parquet") and "/" in f})
    return ", ".join(found[:12]) + (" …" if len(found) > 12 else "") if found else "none"


def parquet_files(repo: str, config: str, split: str, *, online: bool) -> list[str]:
    """The dataset's ``<config>/<split>-*.parquet`` files, sorted: known ones from a table, others by listing."""
    known = KNOWN_FILES.get((repo, config, split))
    if known:
        return list(known)
    if not online:
        raise CorpusError(f"cannot list {repo} (config {config}, split {split}): the Hugging Face hub is "
                          f"unreachable; {build_offline_hint()}")
    from huggingface_hub import HfApi

    listed = _with_retries(lambda: HfApi().list_repo_files(repo, repo_type="dataset"), f"the file list of {repo}")
    files = sorted(f for f in listed if fnmatch.fnmatchcase(f, f"{config}/{split}-*.parquet"))
    if not files:
        raise CorpusError(f"{repo} has no {config}/{split}-*.parquet files (config/split found: {_configs_in(listed)})")
    return files


def _download(repo: str, filename: str, *, online: bool, progress: JobProgress) -> Path:
    from huggingface_hub import hf_hub_download

    extra = {}
    if "tqdm_class" in inspect.signature(hf_hub_download).parameters:  # huggingface_hub >= 1.0
        extra["tqdm_class"] = progress.download_bar(f"download {filename.rsplit('/', 1)[-1]}")
    return Path(_with_retries(
        lambda: hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset", local_files_only=not online,
                                **extra),
        f"{repo}/{filename}",
    ))


def _with_retries(call, what: str):
    """``call()``, tried again on 5xx answers (not every huggingface_hub release retries them itself)."""
    for attempt in range(1, DOWNLOAD_TRIES + 1):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - every hub failure becomes one line
            if attempt < DOWNLOAD_TRIES and _transient(exc):
                time.sleep(RETRY_WAIT_S * attempt)
                continue
            raise _hub_failure(exc, what) from None
    raise AssertionError("unreachable")


@contextmanager
def _hub_quiet() -> Iterator[None]:
    """huggingface_hub logs each retry as a warning; the progress display (and the final error) say enough."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def _commit_of(local: Path, filename: str) -> str | None:
    """The hub commit a file came from: huggingface_hub keeps it at ``snapshots/<commit>/<filename>``."""
    snapshot = local.parents[len(filename.split("/")) - 1]
    return snapshot.name if snapshot.parent.name == "snapshots" else None


def _parquet_rows(local: Path, filename: str) -> Iterator[str | None]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(local)
        if TEXT_COLUMN not in pf.schema_arrow.names:
            raise CorpusError(f"{filename} has no {TEXT_COLUMN!r} column (columns: {', '.join(pf.schema_arrow.names)})")
        for batch in pf.iter_batches(batch_size=4096, columns=[TEXT_COLUMN]):
            yield from batch.column(0).to_pylist()
    except CorpusError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors are many; the user needs the file and the reason
        raise CorpusError(f"cannot read {filename}: {one_line(exc)}") from None


# ------------------------------------------------------------------------------------------------ directory
def sample_files(directory: Path) -> list[Path]:
    """The numbered samples of a built corpus, in order."""
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _SAMPLE_NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def checksum(files: Iterable[Path]) -> str:
    """``sha256:`` of, for each file in order, its name, its length and its bytes."""
    h = hashlib.sha256()
    for p in files:
        data = p.read_bytes()
        h.update(f"{p.name}\0{len(data)}\0".encode())
        h.update(data)
    return "sha256:" + h.hexdigest()


def read_manifest(directory: str | Path) -> dict | None:
    """The manifest of a complete corpus directory, or None when it has none (or an unreadable one)."""
    try:
        data = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _claim(out: Path) -> None:
    """Make ``out`` ours to write: new, empty, or already a corpus (complete or interrupted)."""
    if out.exists() and not out.is_dir():
        raise CorpusError(f"{out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    ours = (out / MANIFEST).exists() or (out / BUILDING).exists()
    if not ours and any(not p.name.startswith(".") for p in out.iterdir()):
        raise CorpusError(f"{out} is not empty and holds no Neuroscope corpus; choose an empty --output directory")


def _plan(repo: str, dataset: str, config: str, split: str, count: int, options: SampleOptions) -> dict:
    return {"format": FORMAT, "dataset": dataset, "repo": repo, "config": config, "split": split,
            "samples": count, "sample_options": options.as_dict()}


def up_to_date(directory: Path, plan: dict) -> dict | None:
    """The manifest when ``directory`` already holds exactly what ``plan`` asks for, files intact."""
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("plan") != plan:
        return None
    if checksum(sample_files(directory)) != manifest.get("checksum"):
        return None
    return manifest


def build_corpus(
    output: str | Path | None = None,
    *,
    samples_wanted: int = DEFAULT_SAMPLES,
    dataset: str = DEFAULT_DATASET,
    config: str = DEFAULT_CONFIG,
    split: str = DEFAULT_SPLIT,
    options: SampleOptions = SampleOptions(),
    console: Console | None = None,
) -> dict:
    """Download the dataset's parquet files (as many as the samples need) and write the corpus; returns the
    manifest. Already built with the same options and intact: returns at once with ``"up_to_date": True``."""
    if samples_wanted < 1:
        raise CorpusError(f"--samples must be at least 1, got {samples_wanted}")
    repo, name = resolve_dataset(dataset)
    out = Path(output).expanduser() if output else paths.corpus_dir(name, config, split)
    plan = _plan(repo, name, config, split, samples_wanted, options)
    if (done := up_to_date(out, plan)) is not None:
        return {**done, "up_to_date": True}

    with _hub_quiet():
        return _build(out, plan, options, console)


def _build(out: Path, plan: dict, options: SampleOptions, console: Console | None) -> dict:
    from neuroscope.store.hf import hub_reachable

    repo, config, split, samples_wanted = plan["repo"], plan["config"], plan["split"], plan["samples"]
    online = hub_reachable()
    files = parquet_files(repo, config, split, online=online)
    _claim(out)
    atomic.remove_stale_tmp(out)
    atomic.write_json(out / BUILDING, plan)
    (out / MANIFEST).unlink(missing_ok=True)  # from here until the end the directory is marked incomplete
    width = max(_NAME_WIDTH, len(str(samples_wanted - 1)))
    used: list[str] = []
    revisions: set[str] = set()

    with JobProgress(console) as progress:

        def rows() -> Iterator[str | None]:
            for filename in files:
                local = _download(repo, filename, online=online, progress=progress)
                used.append(filename)
                if commit := _commit_of(local, filename):
                    revisions.add(commit)
                yield from _parquet_rows(local, filename)

        counter = progress.items("write samples", samples_wanted)
        written: list[Path] = []
        articles: set[int] = set()
        total_chars = 0
        for article, text in samples(rows(), options):
            target = out / f"{len(written):0{width}d}.txt"
            data = (text + "\n").encode("utf-8")
            if not (target.is_file() and target.read_bytes() == data):
                atomic.write_bytes(target, data)
            written.append(target)
            articles.add(article)
            total_chars += len(text)
            counter.advance()
            if len(written) == samples_wanted:
                break
        counter.finish(len(written))

    if not written:
        raise CorpusError(f"{repo} ({config}/{split}) gave no samples: its rows hold no text")
    keep = {p.name for p in written}
    for stale in sample_files(out):  # from an earlier, larger build
        if stale.name not in keep:
            stale.unlink()
    atomic.fsync_dir(out)
    manifest = {
        "format": FORMAT,
        "plan": plan,
        "source": {"repo": repo, "config": config, "split": split, "files": used, "revisions": sorted(revisions)},
        "counts": {"samples": len(written), "articles": len(articles), "exhausted": len(written) < samples_wanted},
        "total_chars": total_chars,
        "total_bytes": sum(p.stat().st_size for p in written),
        "first": written[0].name,
        "last": written[-1].name,
        "checksum": checksum(written),
        "neuroscope_version": __version__,
    }
    atomic.write_json(out / MANIFEST, manifest)
    (out / BUILDING).unlink(missing_ok=True)
    atomic.fsync_dir(out)
    return {**manifest, "up_to_date": False}


# ------------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True, slots=True)
class Sample:
    name: str  # path relative to the corpus directory, with "/"
    text: str


def corpus_files(path: str | Path) -> list[Path]:
    """Every ``.txt`` under ``path`` (recursive, hidden files and folders skipped), sorted by relative path."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CorpusError(f"corpus directory not found: {root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / f for f in filenames if f.endswith(".txt") and not f.startswith(".")]
    if not found:
        raise CorpusError(f"no .txt files in {root}")
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def iter_corpus(path: str | Path) -> Iterator[Sample]:
    """The samples of any directory of UTF-8 ``.txt`` files (trailing whitespace removed; empty files skipped)."""
    root = Path(path).expanduser()
    for p in corpus_files(root):
        try:
            text = p.read_text(encoding="utf-8").rstrip()
        except UnicodeDecodeError as exc:
            raise CorpusError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if text:
            yield Sample(p.relative_to(root).as_posix(), text)


def ensure_corpus(
    corpus_path: str | Path | None = None, *, samples_wanted: int = DEFAULT_SAMPLES, console: Console | None = None
) -> Path:
    """The corpus directory a command should read: ``corpus_path`` when given, else the default WikiText corpus,
    built (or extended to ``samples_wanted``) when needed. Offline with nothing cached: a :class:`CorpusError`."""
    if corpus_path is not None:
        corpus_files(corpus_path)  # exists and holds text
        return Path(corpus_path).expanduser()
    out = default_dir()
    manifest = read_manifest(out)
    if manifest is not None and (manifest["counts"]["samples"] >= samples_wanted or manifest["counts"]["exhausted"]):
        return out
    from neuroscope.store.hf import hub_reachable

    try:
        build_corpus(out, samples_wanted=max(samples_wanted, DEFAULT_SAMPLES), console=console)
    except CorpusError:
        if manifest is not None and not hub_reachable():  # offline: the smaller corpus we have beats none
            return out
        if not hub_reachable():
            raise CorpusError(f"no corpus in {out} and the Hugging Face hub is unreachable: {offline_hint()}") from None
        raise
    return out
