"""Models and SAEs in the Hugging Face cache: what is there (``models list``, ``sae list``), fetching what serving
needs (``models pull``, ``sae pull``), and the registry of known SAE releases (``neuroscope/data``).

The cache is huggingface_hub's own (``scan_cache_dir``); Neuroscope never writes into it except through
huggingface_hub's downloads, and ``clean`` never touches it.
"""

from __future__ import annotations

import inspect
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path


from neuroscope.core.checkpoint import ALLOW_PATTERNS
from neuroscope.core.releases import registry, release_path, releases_for  # noqa: F401  (the registry's home)
from neuroscope.core.sae import SAEError, npz_header

SAE_KEYS = ("W_enc", "b_enc", "threshold", "W_dec", "b_dec")


class HubCacheError(Exception):
    """A list or pull that cannot go ahead; the message is one line a user can act on."""


# ------------------------------------------------------------------------------------------------ listing
# the checkpoints Neuroscope serves, by config.json's model_type (a multimodal Gemma 3 is served as text)
MODEL_FAMILIES = {"gemma2": "Gemma 2", "gemma3_text": "Gemma 3", "gemma3": "Gemma 3 (multimodal, served as text)"}


def model_family(model_type: str | None) -> str:
    """What a checkpoint's ``model_type`` is to Neuroscope: its family, or why it is not served."""
    if model_type in MODEL_FAMILIES:
        return MODEL_FAMILIES[model_type]
    return "unknown (no model_type)" if model_type is None else f"{model_type} (not served)"


def check_model_type(repo: str, config: dict) -> str:
    """``config``'s model_type when Neuroscope serves it, else :class:`HubCacheError` naming the ones it does."""
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in MODEL_FAMILIES:
        what = f"a {model_type!r} model" if isinstance(model_type, str) else "a checkpoint without a model_type"
        raise HubCacheError(f"{repo} is {what}; Neuroscope serves Gemma 2 and Gemma 3 checkpoints (model_type "
                            f"{', '.join(MODEL_FAMILIES)})")
    return model_type


def _model_type(config_json: Path) -> str | None:
    try:
        data = json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("model_type") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class CachedModel:
    repo: str
    revisions: tuple[str, ...]  # "abc1234 (main)" per cached revision
    size: int
    last_used: float | None  # the newest access time of its files (POSIX seconds)
    model_type: str | None = None  # config.json's, in the newest revision

    @property
    def family(self) -> str:
        return model_family(self.model_type)


@dataclass(frozen=True)
class CachedSae:
    repo: str
    revision: str  # short commit
    path: str  # the params.npz in the repo, or the directory of a Gemma Scope 2 / SAELens SAE
    d_model: int | None
    d_sae: int | None
    size: int
    problem: str | None = None  # why its header could not be read
    format: str = "gemma-scope"  # neuroscope.core.sae_formats: gemma-scope | gemma-scope-2 | saelens


def _scan():
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        return scan_cache_dir(constants.HF_HUB_CACHE).repos
    except CacheNotFound:
        return frozenset()


def _revisions(repo) -> tuple[str, ...]:
    out = []
    for rev in sorted(repo.revisions, key=lambda r: -r.last_modified):
        refs = ", ".join(sorted(rev.refs))
        out.append(f"{rev.commit_hash[:7]}" + (f" ({refs})" if refs else ""))
    return tuple(out)


def cached_models() -> list[CachedModel]:
    """Model repos in the hub cache that hold a ``config.json`` (a checkpoint, not only an SAE), by repo id."""
    found = []
    for repo in _scan():
        if repo.repo_type != "model":
            continue
        configs = [f.file_path for rev in sorted(repo.revisions, key=lambda r: -r.last_modified) for f in rev.files
                   if f.file_name == "config.json" and f.file_path.parent == rev.snapshot_path]
        if not configs:
            continue
        found.append(CachedModel(repo.repo_id, _revisions(repo), repo.size_on_disk, repo.last_accessed,
                                 _model_type(configs[0])))
    return sorted(found, key=lambda m: m.repo)


def cached_files() -> set[tuple[str, str]]:
    """``(repo, path in the repo)`` of every file in the model repos of the hub cache, any revision."""
    return {(repo.repo_id, f.file_path.relative_to(rev.snapshot_path).as_posix())
            for repo in _scan() if repo.repo_type == "model" for rev in repo.revisions for f in rev.files}


def sae_shape(path: str | Path) -> tuple[int, int]:
    """``(d_model, d_sae)`` of a Gemma Scope style ``params.npz`` from its headers, or :class:`SAEError` saying
    what is wrong (a missing array, a shape that does not fit the others)."""
    try:
        header = npz_header(path)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SAEError(f"{path} is not a readable .npz file: {exc}") from None
    missing = [k for k in SAE_KEYS if k not in header]
    if missing:
        raise SAEError(f"{path} is not an SAE params.npz: it lacks {', '.join(missing)}")
    w_enc = header["W_enc"][0]
    if len(w_enc) != 2:
        raise SAEError(f"{path}: W_enc has shape {w_enc}, expected (d_model, d_sae)")
    d_model, d_sae = w_enc
    want = {"b_enc": (d_sae,), "threshold": (d_sae,), "W_dec": (d_sae, d_model), "b_dec": (d_model,)}
    for key, shape in want.items():
        if header[key][0] != shape:
            raise SAEError(f"{path}: {key} has shape {header[key][0]}, expected {shape} for W_enc {w_enc}")
    return d_model, d_sae


def cached_saes() -> list[CachedSae]:
    """Every SAE in model repos of the hub cache, of every format (``.npz`` files; directories holding a Gemma
    Scope 2 or SAELens weights file and its config), with its shape read from the headers."""
    from neuroscope.core import sae_formats

    found = []
    for repo in _scan():
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            files = {f.file_path.relative_to(rev.snapshot_path).as_posix(): f for f in rev.files}
            for in_repo, f in files.items():
                folder, _, name = in_repo.rpartition("/")
                fmt = next((k for k, (w, _) in sae_formats.DIR_FILES.items() if name == w), None)
                if name.endswith(".npz"):
                    loc, shown, size = sae_formats.SAELocation(sae_formats.GEMMA_SCOPE, f.file_path), in_repo, \
                        f.size_on_disk
                elif fmt is not None:
                    config = files.get(f"{folder}/{sae_formats.DIR_FILES[fmt][1]}" if folder else
                                       sae_formats.DIR_FILES[fmt][1])
                    if config is None:  # a weights file alone is not an SAE this cache can serve
                        continue
                    loc = sae_formats.SAELocation(fmt, f.file_path, config.file_path)
                    shown, size = folder or ".", f.size_on_disk + config.size_on_disk
                else:
                    continue
                try:
                    d_model, d_sae = sae_formats.shape(loc)
                    problem = None
                except SAEError as exc:
                    d_model = d_sae = None
                    problem = str(exc).split(": ", 1)[-1]
                found.append(CachedSae(repo.repo_id, rev.commit_hash[:7], shown, d_model, d_sae, size, problem,
                                       loc.format))
    return sorted(found, key=lambda s: (s.repo, s.path, s.revision))


# ------------------------------------------------------------------------------------------------ pulling
def pull_model(repo: str, revision: str | None = None, *, console=None) -> Path:
    """Download what serving needs from model ``repo`` (config, tokenizer files, safetensors and their index;
    not GGUF, PyTorch bins or ONNX) into the hub cache; returns the snapshot directory. Its ``config.json`` comes
    first: a checkpoint of a family Neuroscope does not serve is refused before any weights are fetched."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    from neuroscope.progress import JobProgress
    from neuroscope.store.hf import download_mode, hub_failure

    console, offline = download_mode(console)
    try:
        config = Path(hf_hub_download(repo, "config.json", revision=revision, local_files_only=offline))
    except (OSError, ValueError, EntryNotFoundError) as exc:  # huggingface_hub's errors derive from these
        if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
            raise HubCacheError(f"{repo} has no config.json: not a model checkpoint Neuroscope can serve") from None
        raise HubCacheError(hub_failure(exc, f"model {repo}", kind="model repo")) from None
    try:
        check_model_type(repo, json.loads(config.read_text(encoding="utf-8")))
    except ValueError:
        raise HubCacheError(f"{repo}'s config.json is not valid JSON: not a model checkpoint Neuroscope can serve") \
            from None
    with JobProgress(console) as progress:
        try:
            path = Path(snapshot_download(repo, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                          local_files_only=offline,
                                          tqdm_class=progress.download_bar(f"pull {repo}", use_desc=True)))
        except (OSError, ValueError) as exc:  # huggingface_hub's errors derive from these
            raise HubCacheError(hub_failure(exc, f"model {repo}", kind="model repo")) from None
    if not (path / "config.json").is_file():
        raise HubCacheError(f"{repo} has no config.json: not a model checkpoint Neuroscope can serve")
    if not any(path.glob("*.safetensors")):
        raise HubCacheError(f"{repo} has no safetensors weights (Neuroscope loads safetensors checkpoints)")
    return path


def sae_file(path: str) -> str:
    """``layer_20/width_16k/average_l0_71`` and ``…/params.npz`` name the same file (a directory that holds a
    Gemma Scope 2 or SAELens SAE instead is told apart by :func:`pull_sae`)."""
    path = path.strip("/")
    return path if path.endswith(".npz") else f"{path}/params.npz"


@dataclass(frozen=True)
class PulledSae:
    weights: Path  # the weights file in the hub cache
    repo_path: str  # the weights file in the repo
    format: str
    d_model: int
    d_sae: int
    size: int  # bytes of its files (weights and config)


def pull_sae(repo: str, path: str, *, console=None) -> PulledSae:
    """Download one SAE into the hub cache — a ``params.npz``, or a Gemma Scope 2 / SAELens directory (its config
    and weights file: what ``path`` holds says which) — and check it reads: shapes, and its config."""
    from huggingface_hub import hf_hub_download

    from neuroscope.core import sae_formats
    from neuroscope.progress import JobProgress
    from neuroscope.store.hf import download_mode, hub_failure

    console, offline = download_mode(console)
    try:
        loc = sae_formats.locate(repo, path, None, fetch_weights=False)  # the config only (small)
    except SAEError as exc:
        raise HubCacheError(str(exc)) from None
    filename = loc.hub_weights or sae_file(path)
    with JobProgress(console) as progress:
        extra: dict = {"local_files_only": offline}
        if "tqdm_class" in inspect.signature(hf_hub_download).parameters:  # huggingface_hub >= 1.0
            extra["tqdm_class"] = progress.download_bar(f"pull {filename.rsplit('/', 1)[-1]}")
        try:
            local = Path(hf_hub_download(repo, filename, **extra))
        except (OSError, ValueError) as exc:
            raise HubCacheError(hub_failure(exc, f"SAE {repo}/{filename}", kind="SAE repo")) from None
    try:
        d_model, d_sae = sae_formats.shape(sae_formats.SAELocation(loc.format, local, loc.config))
    except SAEError as exc:
        raise HubCacheError(f"downloaded {repo}/{filename}, but {str(exc).split(': ', 1)[-1]}") from None
    size = local.stat().st_size + (loc.config.stat().st_size if loc.config is not None else 0)
    return PulledSae(local, filename, loc.format, d_model, d_sae, size)
