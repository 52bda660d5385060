"""``push`` / ``pull``: calibration and labels shared through a Hugging Face dataset repo, with a manifest.

The repo mirrors the cache layout: a file at ``<cache>/calibration/<namespace>/calibration.json`` is
``calibration/<namespace>/calibration.json`` in the repo. ``manifest.json`` lists every file with its kind, the
namespace it belongs to (model, SAE, SAE file, layer, input norm, and the labeler or Neuronpedia source where one
applies — stored explicitly, not only implied by the path), its size and sha256.

Pull verifies everything before installing anything: an unknown manifest format, a path outside the known
layout, a path that disagrees with its namespace, or one file whose bytes differ from the manifest, and nothing
is installed. Files then go in one by one atomically (staged next to their target, then renamed); a local file
that differs is moved to the trash first (``clean undo`` brings it back), an identical one is left alone.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from neuroscope import __version__
from neuroscope.store import atomic, paths, trash
from neuroscope.store.paths import Namespace

MANIFEST = "manifest.json"
FORMAT = "neuroscope-data/1"

# file kind -> (data root name in paths.data_roots(), file name)
KINDS = {
    "calibration": ("calibration", "calibration.json"),
    "labels": ("labels", "labels.jsonl"),
    "scores": ("labels", "scores.jsonl"),
    "failed": ("labels", "failed.jsonl"),
    "dead": ("labels", "dead.json"),
    "legacy_labels": ("labels", "labels.json"),
    "neuronpedia": ("neuronpedia", "explanations.jsonl"),
}
_LABELER_FILES = {name: kind for kind, (root, name) in KINDS.items() if root == "labels" and kind != "legacy_labels"}
_LAYER = re.compile(r"layer_(\d+)")
_LOCAL = re.compile(r"local-sha256-[0-9a-f]{16}")


class DataRepoError(Exception):
    """A push or pull that cannot go ahead; the message is one line a user can act on."""


@dataclass
class DataFile:
    path: str  # in the repo, and relative to the cache
    kind: str
    namespace: dict  # model / sae / sae_path / layer / input_norm (+ labeler), or the Neuronpedia ids
    size: int
    sha256: str
    data: bytes | None = field(default=None, repr=False)  # the bytes pushed (read once, hashed, uploaded)

    def entry(self) -> dict:
        return {"path": self.path, "kind": self.kind, "namespace": self.namespace, "size": self.size,
                "sha256": self.sha256}


# --------------------------------------------------------------------------------------------- namespaces
def _unslug(component: str) -> str | None:
    """The text a :func:`paths.safe_component` came from, when the rewrite is lossless (no ``~``)."""
    return None if "~" in component else component.replace("__", "/")


def _namespace_from_parts(parts: tuple[str, ...]) -> dict | None:
    """model / sae / sae_path / layer / input_norm from a :attr:`Namespace.path`'s components (None: not one).
    Values that the path cannot give back exactly (hashed names, a local SAE's short hash) are None."""
    if len(parts) not in (4, 5) or not _LAYER.fullmatch(parts[-2]) or not parts[-1].startswith("norm_"):
        return None
    layer, norm = int(_LAYER.fullmatch(parts[-2]).group(1)), _unslug(parts[-1][len("norm_"):])
    if len(parts) == 4:
        if not _LOCAL.fullmatch(parts[1]):
            return None
        return {"model": _unslug(parts[0]), "sae": None, "sae_path": None, "layer": layer, "input_norm": norm}
    return {"model": _unslug(parts[0]), "sae": _unslug(parts[1]), "sae_path": _unslug(parts[2]), "layer": layer,
            "input_norm": norm}


def _full(ns: dict) -> Namespace | None:
    try:
        return Namespace(ns["model"], ns["sae"], ns["sae_path"], int(ns["layer"]), ns["input_norm"])
    except (KeyError, TypeError, ValueError):
        return None


def _calibration_namespaces() -> dict[PurePosixPath, dict]:
    """namespace path -> the full namespace a calibration file states (it names local SAEs' whole hash)."""
    found = {}
    root = paths.calibration_root()
    for file in sorted(root.rglob(KINDS["calibration"][1])) if root.is_dir() else []:
        try:
            ident = json.loads(file.read_text(encoding="utf-8"))  # the identity keys are top-level
            ns = Namespace(ident["model"], ident["sae"], ident["sae_path"], int(ident["layer"]),
                           ident["sae_input_norm"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found[ns.path] = ns.as_dict()
    return found


def describe(relative: PurePosixPath, known: dict[PurePosixPath, dict] | None = None) -> tuple[str, dict] | None:
    """The kind and namespace of a cache-relative path, or None when it is not a file push shares."""
    roots = {name: p.name for name, p in paths.data_roots().items()}
    parts = relative.parts
    if len(parts) < 2:
        return None
    top, name, middle = parts[0], parts[-1], parts[1:-1]
    known = known or {}

    def namespace(ns_parts: tuple[str, ...]) -> dict | None:
        return known.get(PurePosixPath(*ns_parts)) or _namespace_from_parts(ns_parts)

    if top == roots["calibration"] and name == KINDS["calibration"][1]:
        ns = namespace(middle)
        return ("calibration", ns) if ns else None
    if top == roots["labels"]:
        if name == KINDS["legacy_labels"][1]:
            ns = namespace(middle)
            return ("legacy_labels", ns) if ns else None
        if name in _LABELER_FILES and len(middle) > 1:
            ns = namespace(middle[1:])
            if ns is not None:
                return _LABELER_FILES[name], {**ns, "labeler": _unslug(middle[0])}
        return None
    if top == roots["neuronpedia"] and name == KINDS["neuronpedia"][1] and len(middle) == 2:
        return "neuronpedia", {"neuronpedia_model": _unslug(middle[0]), "neuronpedia_source": _unslug(middle[1])}
    return None


def expected_path(kind: str, ns: dict) -> PurePosixPath | None:
    """Where the cache keeps a ``kind`` file of namespace ``ns``, relative to the cache (None: ``ns`` is not
    complete enough to say)."""
    cache = paths.cache_dir()
    if kind == "neuronpedia":
        try:
            p = paths.neuronpedia_file(ns["neuronpedia_model"], ns["neuronpedia_source"])
        except (KeyError, TypeError):
            return None
        return PurePosixPath(p.relative_to(cache).as_posix())
    full = _full(ns)
    if full is None:
        return None
    if kind == "calibration":
        p = paths.calibration_file(full)
    elif kind == "legacy_labels":
        p = paths.legacy_autointerp_labels_file(full)
    else:
        labeler = ns.get("labeler")
        if not isinstance(labeler, str):
            return None
        p = paths.autointerp_dir(labeler, full) / KINDS[kind][1]
    return PurePosixPath(p.relative_to(cache).as_posix())


# --------------------------------------------------------------------------------------------- push
def collect() -> list[DataFile]:
    """Every calibration, label, score, failure, dead-feature and Neuronpedia file in the cache, read and hashed."""
    import hashlib

    cache = paths.cache_dir()
    known = _calibration_namespaces()
    roots = paths.data_roots()
    found = []
    for root in (roots["calibration"], roots["labels"], roots["neuronpedia"]):
        if not root.is_dir():
            continue
        for file in sorted(root.rglob("*")):
            if not file.is_file() or file.name.startswith("."):
                continue
            relative = PurePosixPath(file.relative_to(cache).as_posix())
            described = describe(relative, known)
            if described is None:
                continue
            data = file.read_bytes()
            found.append(DataFile(relative.as_posix(), described[0], described[1], len(data),
                                  hashlib.sha256(data).hexdigest(), data))
    return found


def manifest(files: list[DataFile]) -> dict:
    return {"format": FORMAT, "neuroscope_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": [f.entry() for f in files]}


def check_write_access(api, token: str | None) -> str:
    """The user a write token belongs to; :class:`DataRepoError` saying how to log in otherwise."""
    from huggingface_hub.errors import HfHubHTTPError

    from neuroscope.store.hf import LOGIN_HINT, one_line, write_access_problem

    if not token:
        raise DataRepoError(f"push needs a Hugging Face write token: {LOGIN_HINT}")
    try:
        info = api.whoami(token=token)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise DataRepoError(f"the Hugging Face token is invalid: {LOGIN_HINT}") from None
        raise DataRepoError(f"cannot check the Hugging Face token: {one_line(exc)}") from None
    except OSError as exc:
        raise DataRepoError(f"cannot reach the Hugging Face hub to check the token: {one_line(exc)}") from None
    if (problem := write_access_problem(info)) is not None:
        raise DataRepoError(f"the Hugging Face token cannot write ({problem}): {LOGIN_HINT}")
    return str(info.get("name") or "")


def push(repo: str, message: str, *, private: bool = False) -> tuple[list[DataFile], str]:
    """Upload every shareable file and the manifest to dataset ``repo`` in one commit: (files, commit url)."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from neuroscope.store.hf import LOGIN_HINT, UNREACHABLE, hub_reachable, one_line, token

    files = collect()
    if not files:
        raise DataRepoError(f"nothing to push: no calibration, labels or Neuronpedia cache in {paths.cache_dir()}")
    if not hub_reachable():
        raise DataRepoError(f"cannot push to {repo}: {UNREACHABLE} (HF_ENDPOINT, the network, HF_HUB_OFFLINE)")
    api = HfApi()
    tok = token()
    check_write_access(api, tok)
    body = (json.dumps(manifest(files), indent=2, sort_keys=True) + "\n").encode("utf-8")
    ops = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=f.data) for f in files]
    ops.append(CommitOperationAdd(path_in_repo=MANIFEST, path_or_fileobj=body))
    try:
        api.create_repo(repo, repo_type="dataset", exist_ok=True, private=private, token=tok)
        info = api.create_commit(repo, ops, commit_message=message, repo_type="dataset", token=tok)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise DataRepoError(f"the hub refused to write to {repo} (HTTP {status}): {LOGIN_HINT}, with access "
                                "to that namespace") from None
        raise DataRepoError(f"cannot push to {repo}: {one_line(exc)}") from None
    except (OSError, ValueError) as exc:
        raise DataRepoError(f"cannot push to {repo}: {one_line(exc)}") from None
    return files, str(info.commit_url)


# --------------------------------------------------------------------------------------------- pull
@dataclass
class PullResult:
    installed: list[str] = field(default_factory=list)  # new files
    replaced: list[str] = field(default_factory=list)  # local files that differed (now in the trash)
    unchanged: list[str] = field(default_factory=list)
    trash_entry: Path | None = None


def _safe_relative(path: object) -> PurePosixPath | None:
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        return None
    p = PurePosixPath(path)
    if any(part in ("", ".", "..") for part in p.parts) or p.as_posix() != path:
        return None
    return p


def verify(snapshot: Path) -> list[tuple[dict, Path]]:
    """The manifest's entries, each with its file in ``snapshot``, once every one checks out; else
    :class:`DataRepoError` naming the first that does not."""
    try:
        data = json.loads((snapshot / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataRepoError(f"the repo has no {MANIFEST}: not a Neuroscope data repo (nothing installed)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataRepoError(f"{MANIFEST} is not valid JSON ({exc}); nothing installed") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt != FORMAT:
        raise DataRepoError(f"unknown manifest format {fmt!r} (this Neuroscope reads {FORMAT}; a newer "
                            "Neuroscope may read it); nothing installed")
    entries = data.get("files")
    if not isinstance(entries, list):
        raise DataRepoError(f"{MANIFEST} lists no files; nothing installed")
    checked, seen = [], set()
    for entry in entries:
        where = entry.get("path") if isinstance(entry, dict) else None
        relative = _safe_relative(where)
        kind = entry.get("kind") if isinstance(entry, dict) else None
        ns = entry.get("namespace") if isinstance(entry, dict) else None
        if relative is None or kind not in KINDS or not isinstance(ns, dict) or relative in seen:
            raise DataRepoError(f"{MANIFEST}: entry {where!r} is not a valid file entry; nothing installed")
        seen.add(relative)
        described = describe(relative)
        if described is None or described[0] != kind:
            raise DataRepoError(f"{MANIFEST}: {where} is not where Neuroscope keeps {kind} files; nothing installed")
        want = expected_path(kind, ns)
        if want is not None and want != relative:
            raise DataRepoError(f"{MANIFEST}: {where} does not match its namespace (expected {want}); "
                                "nothing installed")
        file = snapshot / relative
        if not file.is_file():
            raise DataRepoError(f"{where} is listed in {MANIFEST} but missing from the repo; nothing installed")
        size = file.stat().st_size
        if size != entry.get("size") or paths.file_sha256(file) != entry.get("sha256"):
            raise DataRepoError(f"checksum mismatch for {where}: the downloaded file differs from {MANIFEST}; "
                                "nothing installed")
        checked.append((entry, file))
    return checked


def install(checked: list[tuple[dict, Path]]) -> PullResult:
    """Put verified files into the cache: each staged beside its target and renamed into place; local files
    that differ go to one trash entry first."""
    import shutil

    cache = paths.cache_dir()
    result = PullResult()
    staged: list[tuple[Path, Path]] = []
    replace: dict[Path, str] = {}
    try:
        for entry, source in checked:
            target = cache / entry["path"]
            if target.is_file() and paths.file_sha256(target) == entry["sha256"]:
                result.unchanged.append(entry["path"])
                continue
            if target.exists() or target.is_symlink():
                replace[target] = entry["sha256"]
                result.replaced.append(entry["path"])
            else:
                result.installed.append(entry["path"])
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic.remove_stale_tmp(target.parent)  # what a killed pull staged there
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            if paths.file_sha256(tmp) != entry["sha256"]:
                raise DataRepoError(f"{entry['path']} changed while being copied; nothing installed")
            staged.append((tmp, target))
        if replace:
            moved = trash.trash("pull", list(replace), replaced_by=replace)
            result.trash_entry = moved.path if moved else None
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, target in staged:
        os.replace(tmp, target)
        atomic.fsync_dir(target.parent)
    return result


def pull(repo: str, *, console=None) -> PullResult:
    """Download dataset ``repo`` (into the hub cache), verify it, install it into the Neuroscope cache."""
    from huggingface_hub import snapshot_download

    from neuroscope.progress import JobProgress
    from neuroscope.store.hf import download_mode, hub_failure

    console, offline = download_mode(console)
    with JobProgress(console) as progress:
        try:
            snapshot = Path(snapshot_download(repo, repo_type="dataset", local_files_only=offline,
                                              tqdm_class=progress.download_bar(f"pull {repo}", use_desc=True)))
        except (OSError, ValueError) as exc:  # huggingface_hub's errors derive from these
            message = hub_failure(exc, f"the data repo {repo}", kind="dataset repo")
            if _missing_repo(exc):
                message += f"; {MAKE_IT_HERE}"
            raise DataRepoError(message) from None
    return install(verify(snapshot))


# what works without a published data repo
MAKE_IT_HERE = ("without one: `neuroscope labels fetch` (Neuronpedia's labels), or `neuroscope calibrate run` and "
                "`neuroscope labels generate` (your own), then `neuroscope push --repo ID` to share them")


def _missing_repo(exc: BaseException) -> bool:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    return isinstance(exc, RepositoryNotFoundError) and not isinstance(exc, GatedRepoError)
