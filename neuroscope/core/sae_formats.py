"""SAE formats, told apart by their files (never by a repo's name), read into :class:`SAEWeights`.

- **Gemma Scope** — ``params.npz`` (``W_enc W_dec b_enc b_dec threshold``), JumpReLU; it names no layer.
- **Gemma Scope 2** — ``params.safetensors`` (``w_enc [d_in, d_sae]``, ``w_dec [d_sae, d_in]``, ``b_enc``,
  ``b_dec``, ``threshold``) + ``config.json`` (``hf_hook_point_in`` ``model.layers.L.output`` → layer L,
  ``architecture`` ``jump_relu``, ``width``, ``l0``, ``type``). Transcoders, crosscoders, affine skip connections
  and SAEs of other hook points (attention, MLP) are refused.
- **SAELens** — ``sae_weights.safetensors`` (``W_enc W_dec b_enc b_dec [threshold]``) + ``cfg.json``
  (``architecture`` jumprelu / topk / standard, ``hook_name`` ``blocks.L.hook_resid_post``,
  ``apply_b_dec_to_input``, ``normalize_activations``).

An SAE is a local file or directory (``--sae-local-path``) or a file or directory of a hub repo (``--sae`` +
``--sae-path``, downloaded through huggingface_hub: only the files its format needs).
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from neuroscope.core import safetensors_np
from neuroscope.core.sae import SAEError, SAEWeights, from_arrays, load_npz

GEMMA_SCOPE, GEMMA_SCOPE_2, SAELENS = "gemma-scope", "gemma-scope-2", "saelens"
FORMAT_NAMES = {GEMMA_SCOPE: "Gemma Scope (params.npz)", GEMMA_SCOPE_2: "Gemma Scope 2", SAELENS: "SAELens"}
NPZ = "params.npz"
# format -> (weights file, config file)
DIR_FILES = {GEMMA_SCOPE_2: ("params.safetensors", "config.json"), SAELENS: ("sae_weights.safetensors", "cfg.json")}
DEFAULT_LAYER = 20  # a params.npz names no layer: this one, unless its hub path says layer_N/
_HUB_LAYER = re.compile(r"(?:^|/)layer_(\d+)(?:/|$)")
_GS2_HOOK = re.compile(r"^model\.(?:language_model\.)?layers\.(\d+)\.output$")
_SAELENS_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


@dataclass(frozen=True)
class SAELocation:
    """An SAE on this machine: its format, weights file and config file (None for ``params.npz``). ``weights``
    is None when only the config was fetched (to read the layer); ``hub_path`` is ``--sae-path`` for a hub SAE,
    ``hub_weights`` the weights file in the repo."""

    format: str
    weights: Path | None
    config: Path | None = None
    hub_path: str | None = None
    hub_weights: str | None = None


# ------------------------------------------------------------------------------------------------ detection
def detect(path: str | Path) -> SAELocation:
    """The format of a local SAE: a ``params.npz`` (or any .npz archive), a directory holding one format's files,
    or one of a directory format's files (its directory is meant)."""
    p = Path(path).expanduser()
    if p.is_file():
        if zipfile.is_zipfile(p):
            return SAELocation(GEMMA_SCOPE, p)
        for fmt, names in DIR_FILES.items():
            if p.name in names:
                return _dir_location(p.parent, fmt)
        raise SAEError(f"SAE file {p} is neither a params.npz archive nor a file of a Gemma Scope 2 "
                       "(params.safetensors + config.json) or SAELens (sae_weights.safetensors + cfg.json) directory")
    if not p.is_dir():
        raise SAEError(f"SAE file not found: {p}")
    if (p / NPZ).is_file():
        return SAELocation(GEMMA_SCOPE, p / NPZ)
    for fmt, (weights, config) in DIR_FILES.items():
        if (p / config).is_file() or (p / weights).is_file():
            return _dir_location(p, fmt)
    held = ", ".join(sorted(c.name for c in p.iterdir())[:8]) or "nothing"
    raise SAEError(f"no SAE in {p}: expected params.npz, params.safetensors + config.json (Gemma Scope 2) or "
                   f"sae_weights.safetensors + cfg.json (SAELens); it holds {held}")


def _dir_location(d: Path, fmt: str) -> SAELocation:
    weights, config = DIR_FILES[fmt]
    missing = [n for n in (weights, config) if not (d / n).is_file()]
    if missing:
        raise SAEError(f"{FORMAT_NAMES[fmt]} SAE {d} lacks {' and '.join(missing)}")
    return SAELocation(fmt, d / weights, d / config)


def locate(repo: str | None, path: str | None, local_path: str | None, *, revision: str | None = None,
           fetch_weights: bool = True) -> SAELocation:
    """The SAE ``--sae-local-path`` names, or the one at ``path`` in hub ``repo`` (downloaded, or read from the
    hub cache offline). With ``fetch_weights=False`` only a directory format's config is fetched."""
    if local_path:
        return detect(local_path)
    if not repo or not path:
        raise SAEError("give --sae and --sae-path (a hub repo and a file or directory in it) or --sae-local-path")
    path = path.strip("/")
    folder, name = path.rpartition("/")[0], path.rpartition("/")[2]
    fmt = next((f for f, names in DIR_FILES.items() if name in names), None)
    if fmt is None and name.endswith(".npz"):
        return SAELocation(GEMMA_SCOPE, _download(repo, path, revision) if fetch_weights else None, hub_path=path,
                           hub_weights=path)
    if fmt is None:  # a directory: which format its files say
        folder = path
        for candidate in (SAELENS, GEMMA_SCOPE_2):
            config = _download(repo, f"{folder}/{DIR_FILES[candidate][1]}", revision, missing_ok=True)
            if config is not None:
                fmt = candidate
                break
        else:
            npz = f"{folder}/{NPZ}"
            return SAELocation(GEMMA_SCOPE, _download(repo, npz, revision) if fetch_weights else None, hub_path=npz,
                               hub_weights=npz)
    weights_name, config_name = DIR_FILES[fmt]
    prefix = f"{folder}/" if folder else ""
    config = _download(repo, prefix + config_name, revision)
    weights = _download(repo, prefix + weights_name, revision) if fetch_weights else None
    return SAELocation(fmt, weights, config, hub_path=path, hub_weights=prefix + weights_name)


def _download(repo: str, filename: str, revision: str | None, *, missing_ok: bool = False) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    from neuroscope.store.hf import hub_reachable

    offline = not hub_reachable()
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision, local_files_only=offline))
    except LocalEntryNotFoundError as exc:
        if missing_ok:
            return None
        raise SAEError(f"cannot fetch SAE {repo}/{filename}: offline and not in the Hugging Face cache "
                       "(connect once, or pass --sae-local-path)") from exc
    except EntryNotFoundError as exc:
        if missing_ok:
            return None
        raise SAEError(f"cannot fetch SAE {repo}/{filename}: no such file in the repo") from exc
    except HfHubHTTPError as exc:
        raise SAEError(f"cannot fetch SAE {repo}/{filename}: {str(exc).splitlines()[0]}") from exc


# ------------------------------------------------------------------------------------------------ configs
@dataclass(frozen=True)
class SAEConfig:
    """What a directory format's config says, validated (the weights not read)."""

    architecture: str = "jumprelu"
    k: int | None = None
    apply_b_dec_to_input: bool = False
    input_scale: float | None = None
    layer: int | None = None
    sizes: dict = field(default_factory=dict)  # d_in / d_sae as the config states them (SAELens), to check


def read_config(loc: SAELocation) -> SAEConfig:
    """The config of ``loc`` (nothing for ``params.npz``), or a one-line :class:`SAEError` naming the file."""
    if loc.config is None:
        return SAEConfig()
    try:
        data = json.loads(Path(loc.config).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEError(f"SAE config {loc.config} is not readable JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SAEError(f"SAE config {loc.config} is not a JSON object")
    return (_gemma_scope_2 if loc.format == GEMMA_SCOPE_2 else _saelens)(data, str(loc.config))


def _refuse(where: str, what: str) -> SAEError:
    return SAEError(f"{where} is {what}; Neuroscope reads residual-stream SAEs only")


def _gemma_scope_2(c: dict, where: str) -> SAEConfig:
    kind = str(c.get("type") or "sae").lower()
    hook_in, hook_out = c.get("hf_hook_point_in"), c.get("hf_hook_point_out")
    if "crosscoder" in kind or isinstance(hook_in, list):
        raise _refuse(where, "a crosscoder (it reads several layers)")
    if "transcoder" in kind or (hook_out is not None and hook_out != hook_in):
        raise _refuse(where, f"a transcoder ({hook_in} -> {hook_out})")
    if kind != "sae":
        raise SAEError(f"{where}: unknown type {c.get('type')!r} (expected sae)")
    if c.get("affine_connection") or c.get("affine_skip_connection"):
        raise _refuse(where, "an SAE with an affine skip connection")
    if not isinstance(hook_in, str):
        raise SAEError(f"{where} lacks hf_hook_point_in (the hook point, e.g. model.layers.12.output)")
    m = _GS2_HOOK.match(hook_in)
    if m is None:
        raise _refuse(where, _hook_kind(hook_in))
    arch = str(c.get("architecture", "jump_relu")).lower().replace("_", "")
    if arch != "jumprelu":
        raise SAEError(f"{where}: unknown architecture {c.get('architecture')!r} (Gemma Scope 2 SAEs are jump_relu)")
    return SAEConfig("jumprelu", layer=int(m.group(1)))


def _hook_kind(hook: str) -> str:
    h = hook.lower()
    if "attn" in h or "attention" in h:
        return f"an attention-output SAE (hook {hook})"
    if "mlp" in h or "feedforward" in h:
        return f"an MLP SAE (hook {hook})"
    return f"an SAE of hook {hook}, not a block's output"


def _saelens(c: dict, where: str) -> SAEConfig:
    meta = c.get("metadata") if isinstance(c.get("metadata"), dict) else {}
    hook = c.get("hook_name") or meta.get("hook_name")
    if not isinstance(hook, str):
        raise SAEError(f"{where} lacks hook_name (e.g. blocks.12.hook_resid_post)")
    m = _SAELENS_HOOK.match(hook)
    if m is None:
        raise _refuse(where, _hook_kind(hook) if "resid" not in hook else f"an SAE of hook {hook}, not resid_post")
    layer = int(m.group(1))
    hook_layer = c.get("hook_layer", meta.get("hook_layer"))
    if hook_layer is not None and int(hook_layer) != layer:
        raise SAEError(f"{where}: hook_layer {hook_layer} disagrees with hook_name {hook}")
    arch = str(c.get("architecture", "standard")).lower()
    act_fn = str(c.get("activation_fn_str") or c.get("activation_fn") or "relu").lower()
    kwargs = c.get("activation_fn_kwargs") if isinstance(c.get("activation_fn_kwargs"), dict) else {}
    if arch == "standard" and act_fn == "topk":
        arch = "topk"
    k = None
    if arch == "topk":
        k = c.get("k", kwargs.get("k"))
        if not isinstance(k, (int, float)) or int(k) != k or k < 1:
            raise SAEError(f"{where}: a topk SAE needs a positive integer k (k or activation_fn_kwargs.k), got {k!r}")
        k = int(k)
        if c.get("rescale_acts_by_decoder_norm"):
            raise SAEError(f"{where}: rescale_acts_by_decoder_norm is not supported")
    elif arch == "standard":
        if act_fn != "relu":
            raise SAEError(f"{where}: activation function {act_fn!r} is not supported (standard SAEs: relu)")
        arch = "relu"
    elif arch != "jumprelu":
        raise SAEError(f"{where}: unknown architecture {c.get('architecture')!r} (supported: jumprelu, topk, standard)")
    norm = c.get("normalize_activations")
    scale = None
    if norm not in (None, "none"):
        if norm != "expected_average_only_in":
            raise SAEError(f"{where}: normalize_activations {norm!r} is not supported (none, expected_average_only_in)")
        scale = c.get("norm_scaling_factor", c.get("scaling_factor"))
        if not isinstance(scale, (int, float)) or not scale > 0:
            raise SAEError(f"{where}: normalize_activations expected_average_only_in needs the scaling factor it was "
                           "trained with (norm_scaling_factor), and the config has none")
        scale = float(scale)
    sizes = {f: int(c[f]) for f in ("d_in", "d_sae") if isinstance(c.get(f), int)}
    return SAEConfig(arch, k, bool(c.get("apply_b_dec_to_input", True)), scale, layer, sizes)


# ------------------------------------------------------------------------------------------------ loading
_TENSORS = {GEMMA_SCOPE_2: {"W_enc": "w_enc", "b_enc": "b_enc", "threshold": "threshold", "W_dec": "w_dec",
                            "b_dec": "b_dec"},
            SAELENS: {"W_enc": "W_enc", "b_enc": "b_enc", "threshold": "threshold", "W_dec": "W_dec",
                      "b_dec": "b_dec"}}


def load(loc: SAELocation, *, dtype=np.float32) -> SAEWeights:
    """The SAE at ``loc`` with everything its config says, or a one-line :class:`SAEError`."""
    if loc.weights is None:
        raise SAEError("the SAE's weights were not fetched")
    if loc.format == GEMMA_SCOPE:
        return replace(load_npz(loc.weights, dtype=dtype), format=GEMMA_SCOPE)
    cfg = read_config(loc)
    path = Path(loc.weights)
    try:
        names = safetensors_np.shapes(path)
    except safetensors_np.SafetensorsError as exc:
        raise SAEError(str(exc)) from None
    if any("affine" in n.lower() or "skip" in n.lower() for n in names):
        raise _refuse(str(path), "an SAE with an affine skip connection")
    wanted = dict(_TENSORS[loc.format])
    if cfg.architecture != "jumprelu":
        del wanted["threshold"]
    elif "threshold" not in names and "log_threshold" in names:
        wanted["threshold"] = "log_threshold"
    missing = [f for f in wanted.values() if f not in names]
    if missing:
        raise SAEError(f"SAE file {path} lacks {', '.join(missing)} (has: {', '.join(sorted(names)) or 'nothing'})")
    try:
        raw = safetensors_np.load(path, list(wanted.values()))
    except safetensors_np.SafetensorsError as exc:
        raise SAEError(str(exc)) from None
    arrays = {ours: raw[theirs] for ours, theirs in wanted.items()}
    w_enc = arrays["W_enc"].shape
    for name, size in zip(("d_in", "d_sae"), w_enc if len(w_enc) == 2 else ()):  # else from_arrays says 2-D
        said = cfg.sizes.get(name)
        if said is not None and said != size:
            raise SAEError(f"SAE {loc.config} says {name}={said} but {path} holds W_enc of shape {w_enc}")
    if wanted.get("threshold") == "log_threshold":
        arrays["threshold"] = np.exp(arrays["threshold"].astype(np.float32))
    return from_arrays(arrays, source=str(path), dtype=dtype, architecture=cfg.architecture, k=cfg.k,
                       apply_b_dec_to_input=cfg.apply_b_dec_to_input, input_scale=cfg.input_scale, layer=cfg.layer,
                       format=loc.format)


def shape(loc: SAELocation) -> tuple[int, int]:
    """``(d_in, d_sae)`` from the weights' headers (no weights read)."""
    if loc.format == GEMMA_SCOPE:
        from neuroscope.core.hub_cache import sae_shape

        return sae_shape(loc.weights)  # type: ignore[arg-type]
    read_config(loc)
    try:
        names = safetensors_np.shapes(loc.weights)  # type: ignore[arg-type]
    except safetensors_np.SafetensorsError as exc:
        raise SAEError(str(exc)) from None
    w_enc = names.get(_TENSORS[loc.format]["W_enc"])
    if w_enc is None or len(w_enc) != 2:
        raise SAEError(f"SAE file {loc.weights}: {_TENSORS[loc.format]['W_enc']} is "
                       f"{'missing' if w_enc is None else f'of shape {w_enc}'}, expected (d_in, d_sae)")
    return int(w_enc[0]), int(w_enc[1])


# ------------------------------------------------------------------------------------------------ layer
def resolve_layer(given: int | None, declared: int | None, *, hub_path: str | None = None,
                  source: str = "the SAE") -> int:
    """The layer to capture: the one the SAE's config declares (an explicit ``--sae-layer`` must agree), else the
    one given, else ``layer_N/`` in a hub path (Gemma Scope's layout), else :data:`DEFAULT_LAYER`."""
    if declared is not None:
        if given is not None and given != declared:
            raise SAEError(f"--sae-layer {given} disagrees with {source}, which was trained on layer {declared} "
                           f"(drop --sae-layer or pass --sae-layer {declared})")
        return declared
    if given is not None:
        return given
    m = _HUB_LAYER.search(hub_path or "")
    return int(m.group(1)) if m else DEFAULT_LAYER
