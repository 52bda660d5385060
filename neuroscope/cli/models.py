"""``neuroscope models list | pull`` and ``neuroscope sae list | pull``: the Hugging Face cache, and fetching into it."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from neuroscope.cli.options import ReadableCommand, err, fail, group
from neuroscope.config import DEFAULT_MODEL, DEFAULT_SAE, DEFAULT_SAE_PATH
from neuroscope.core import hub_cache, releases
from neuroscope.core.sae_formats import FORMAT_NAMES
from neuroscope.store.trash import human

models_app = group(
    help="Models in the Hugging Face cache; download what serving needs.",
)
sae_app = group(
    help="SAE files in the Hugging Face cache and the known Gemma Scope and Gemma Scope 2 releases; download one.",
)



def _ago(when: float | None) -> str:
    if not when:
        return "never"
    seconds = max(0.0, time.time() - when)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


@models_app.command("list", cls=ReadableCommand)
def models_list_cmd() -> None:
    """The models in the Hugging Face cache: family (Gemma 2, Gemma 3), revisions, size on disk, last used; * marks
    the default."""
    models = hub_cache.cached_models()
    out = Console()
    if not models:
        out.print(f"no models in the Hugging Face cache ({escape(_hub_cache_dir())}); "
                  f"`neuroscope models pull` downloads the default, {DEFAULT_MODEL}", highlight=False, soft_wrap=True)
        return
    table = Table("model", "family", "revisions", "size", "last used", title=escape(_hub_cache_dir()),
                  title_justify="left")
    for column in table.columns:  # wrapped, never cut short
        column.overflow = "fold"
    for m in models:
        name = f"{escape(m.repo)} [bold]*[/]" if m.repo == DEFAULT_MODEL else escape(m.repo)
        family = escape(m.family) if m.model_type in hub_cache.MODEL_FAMILIES else f"[yellow]{escape(m.family)}[/]"
        table.add_row(name, family, escape("\n".join(m.revisions)), human(m.size), _ago(m.last_used))
    out.print(table)
    out.print(f"* the default model ({DEFAULT_MODEL})" if any(m.repo == DEFAULT_MODEL for m in models) else
              f"the default model, {DEFAULT_MODEL}, is not cached: `neuroscope models pull`", highlight=False)


@models_app.command("pull", cls=ReadableCommand)
def models_pull_cmd(
    model: Annotated[str, typer.Argument(help="Hub model id.", show_default=True)] = DEFAULT_MODEL,
    revision: Annotated[Optional[str], typer.Option(help="Branch, tag or commit (default: main).")] = None,
) -> None:
    """Download what serving needs (config, tokenizer, safetensors and their index; no GGUF, bins or ONNX) of a
    Gemma 2 or Gemma 3 checkpoint (its config.json is read first: other families are refused before any download).

    Gated models (Gemma) need their licence accepted on the model page and HF_TOKEN set (or a .env file, or
    `hf auth login`).
    """
    try:
        path = hub_cache.pull_model(model, revision, console=err)
    except hub_cache.HubCacheError as exc:
        fail(str(exc))
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    Console().print(f"pulled {escape(model)} ({human(size)})\n  {escape(str(path))}", highlight=False,
                    soft_wrap=True)


def _l0_cell(release: dict, sae: dict, default: releases.KnownSae | None) -> str:
    """The L0 variants of one SAE (Gemma Scope 2's named ones with their average L0), the default's starred."""
    cells = []
    for l0 in sae["l0"]:
        text = f"{l0} ({sae['l0_values'][l0]})" if l0 in sae.get("l0_values", {}) else str(l0)
        is_default = default is not None and default.release is release and \
            (default.layer, default.width, default.l0) == (sae["layer"], sae["width"], l0)
        cells.append(f"{escape(text)}[bold]*[/]" if is_default else escape(text))
    return " ".join(cells)


def _holds(cached_path: str, path: str) -> bool:
    """Whether a cached file is the SAE at ``path`` (a one-file SAE) or one of its files (a directory SAE)."""
    return cached_path == path or cached_path.startswith(path.rstrip("/") + "/")


@sae_app.command("list", cls=ReadableCommand)
def sae_list_cmd(
    model: Annotated[str, typer.Option(help="Show the known releases for this model (hub id).")] = DEFAULT_MODEL,
    layer: Annotated[
        Optional[int], typer.Option(help="Show only this layer's known releases (default: all layers).", min=0)
    ] = None,
) -> None:
    """Cached SAEs of every format (params.npz files, Gemma Scope 2 and SAELens directories; d_model × d_sae from
    their headers) and the registry's releases for --model (Gemma Scope for Gemma 2, Gemma Scope 2 for Gemma 3):
    layers, widths, L0 variants, Neuronpedia ids, which are cached; * marks the model's default SAE."""
    out = Console()
    saes = hub_cache.cached_saes()
    default = releases.default_sae(model)
    if saes:
        table = Table("repo", "file or directory", "format", "revision", "d_model × d_sae", "size",
                      title="cached SAEs", title_justify="left")
        for column in table.columns:  # wrapped, never cut short
            column.overflow = "fold"
        for s in saes:
            shape = f"{s.d_model} × {s.d_sae}" if s.problem is None else f"[red]{escape(s.problem)}[/]"
            star = default is not None and s.repo == default.repo and _holds(s.path, default.path)
            table.add_row(escape(s.repo), escape(s.path) + (" [bold]*[/]" if star else ""),
                          FORMAT_NAMES.get(s.format, s.format), s.revision, shape, human(s.size))
        out.print(table)
    else:
        out.print(f"no SAE files in the Hugging Face cache ({escape(_hub_cache_dir())}); `neuroscope sae pull` "
                  "downloads one", highlight=False, soft_wrap=True)
    known = releases.releases_for(model)
    files = set()  # every cached file and each folder above it: a one-file SAE's file, a directory SAE's folder
    for repo, path in hub_cache.cached_files():
        parts = path.split("/")
        files.update((repo, "/".join(parts[:n])) for n in range(1, len(parts) + 1))
    if not known:
        out.print(f"the registry knows no SAE release for {escape(model)} (it knows "
                  f"{escape(', '.join(releases.known_models()))}); serve it with --sae and --sae-path, or "
                  "--sae-local-path", highlight=False, soft_wrap=True)
        return
    for release in known:
        table = Table("layer", "width", "d_sae", "L0 variants", "canonical", "Neuronpedia", "cached",
                      title=f"known: {escape(release['repo'])} — {escape(release['title'])}, d_model "
                            f"{release['d_model']}", title_justify="left")
        for column in table.columns:  # a narrow terminal wraps ids rather than cutting them short
            column.overflow = "fold"
        for sae in release["saes"]:
            if layer is not None and sae["layer"] != layer:
                continue
            here = [str(l0) for l0 in sae["l0"]
                    if (release["repo"], releases.release_path(release, sae["layer"], sae["width"], l0)) in files]
            table.add_row(str(sae["layer"]), sae["width"], f"{release['widths'][sae['width']]:,}",
                          _l0_cell(release, sae, default), str(sae.get("canonical_l0", "")),
                          escape(sae.get("neuronpedia", "")), ", ".join(here))
        out.print(table)
        example = releases.release_path(release, *(
            (default.layer, default.width, default.l0) if default is not None and default.release is release else
            (release["saes"][0]["layer"], release["saes"][0]["width"], release["saes"][0]["l0"][0])))
        out.print(f"Files are {escape(release['path'])} ({escape(', '.join(release['files']))}); `neuroscope sae "
                  f"pull {escape(release['repo'])} --path {escape(example)}` fetches one", highlight=False,
                  soft_wrap=True)
    if default is not None:
        out.print(f"* the default SAE of {escape(model)}: {escape(default.repo)}/{escape(default.path)}, layer "
                  f"{default.layer} (served when no --sae / --sae-local-path is given)", highlight=False,
                  soft_wrap=True)


@sae_app.command("pull", cls=ReadableCommand)
def sae_pull_cmd(
    repo: Annotated[str, typer.Argument(help="Hub repo of the SAE.", show_default=True)] = DEFAULT_SAE,
    path: Annotated[
        str, typer.Option(help="The params.npz in the repo (or its directory, e.g. layer_20/width_16k/average_l0_71), "
                               "or the directory of a Gemma Scope 2 or SAELens SAE.")
    ] = DEFAULT_SAE_PATH,
) -> None:
    """Download one SAE into the Hugging Face cache — a params.npz, or a Gemma Scope 2 / SAELens directory (its
    config and weights) — and check it reads (names, shapes, config)."""
    try:
        got = hub_cache.pull_sae(repo, path, console=err)
    except hub_cache.HubCacheError as exc:
        fail(str(exc))
    Console().print(f"pulled {escape(repo)}/{escape(got.repo_path)} ({FORMAT_NAMES.get(got.format, got.format)}): "
                    f"d_model {got.d_model} × d_sae {got.d_sae} ({human(got.size)})\n  {escape(str(got.weights))}",
                    highlight=False, soft_wrap=True)
