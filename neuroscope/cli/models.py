"""``neuroscope models list | pull`` and ``neuroscope sae list | pull``: the Hugging Face cache, and fetching into it."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from neuroscope.cli.options import ReadableCommand, err, fail, group
from neuroscope.config import DEFAULT_LAYER, DEFAULT_MODEL, DEFAULT_SAE, DEFAULT_SAE_PATH
from neuroscope.core import hub_cache
from neuroscope.core.sae_formats import FORMAT_NAMES
from neuroscope.store.trash import human

models_app = group(
    help="Models in the Hugging Face cache; download what serving needs.",
)
sae_app = group(
    help="SAE files in the Hugging Face cache and the known Gemma Scope releases; download one.",
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
    """The models in the Hugging Face cache: revisions, size on disk, last used; * marks the default."""
    models = hub_cache.cached_models()
    out = Console()
    if not models:
        out.print(f"no models in the Hugging Face cache ({escape(_hub_cache_dir())}); "
                  f"`neuroscope models pull` downloads the default, {DEFAULT_MODEL}", highlight=False, soft_wrap=True)
        return
    table = Table("model", "revisions", "size", "last used", title=escape(_hub_cache_dir()), title_justify="left")
    for column in table.columns:  # wrapped, never cut short
        column.overflow = "fold"
    for m in models:
        name = f"{escape(m.repo)} [bold]*[/]" if m.repo == DEFAULT_MODEL else escape(m.repo)
        table.add_row(name, escape("\n".join(m.revisions)), human(m.size), _ago(m.last_used))
    out.print(table)
    out.print(f"* the default model ({DEFAULT_MODEL})" if any(m.repo == DEFAULT_MODEL for m in models) else
              f"the default model, {DEFAULT_MODEL}, is not cached: `neuroscope models pull`", highlight=False)


@models_app.command("pull", cls=ReadableCommand)
def models_pull_cmd(
    model: Annotated[str, typer.Argument(help="Hub model id.", show_default=True)] = DEFAULT_MODEL,
    revision: Annotated[Optional[str], typer.Option(help="Branch, tag or commit (default: main).")] = None,
) -> None:
    """Download what serving needs (config, tokenizer, safetensors and their index; no GGUF, bins or ONNX).

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


@sae_app.command("list", cls=ReadableCommand)
def sae_list_cmd(
    layer: Annotated[
        Optional[int], typer.Option(help="Show only this layer's known releases (default: all layers).", min=0)
    ] = None,
) -> None:
    """Cached SAEs of every format (params.npz files, Gemma Scope 2 and SAELens directories; d_model × d_sae from
    their headers) and the known Gemma Scope releases for the default model (layers, widths, average-L0 variants)."""
    out = Console()
    saes = hub_cache.cached_saes()
    if saes:
        table = Table("repo", "file or directory", "format", "revision", "d_model × d_sae", "size",
                      title="cached SAEs", title_justify="left")
        for column in table.columns:  # wrapped, never cut short
            column.overflow = "fold"
        for s in saes:
            shape = f"{s.d_model} × {s.d_sae}" if s.problem is None else f"[red]{escape(s.problem)}[/]"
            default = s.repo == DEFAULT_SAE and s.path == DEFAULT_SAE_PATH
            table.add_row(escape(s.repo), escape(s.path) + (" [bold]*[/]" if default else ""),
                          FORMAT_NAMES.get(s.format, s.format), s.revision, shape, human(s.size))
        out.print(table)
    else:
        out.print(f"no SAE files in the Hugging Face cache ({escape(_hub_cache_dir())}); `neuroscope sae pull` "
                  "downloads the default", highlight=False, soft_wrap=True)
    cached = {(s.repo, s.path) for s in saes}
    for release in hub_cache.releases_for(DEFAULT_MODEL):
        table = Table("layer", "width", "d_sae", "average L0 variants", "canonical", "Neuronpedia", "cached",
                      title=f"known: {escape(release['repo'])} — {escape(release['title'])}, d_model "
                            f"{release['d_model']}", title_justify="left")
        for column in table.columns:  # a narrow terminal wraps ids rather than cutting them short
            column.overflow = "fold"
        for sae in release["saes"]:
            if layer is not None and sae["layer"] != layer:
                continue
            variants, here = [], []
            for l0 in sae["l0"]:
                path = hub_cache.release_path(release, sae["layer"], sae["width"], l0)
                default = path == DEFAULT_SAE_PATH and release["repo"] == DEFAULT_SAE
                variants.append(f"{l0}[bold]*[/]" if default else str(l0))
                if (release["repo"], path) in cached:
                    here.append(str(l0))
            table.add_row(str(sae["layer"]), sae["width"], f"{release['widths'][sae['width']]:,}", " ".join(variants),
                          str(sae.get("canonical_l0", "")), escape(sae.get("neuronpedia", "")), ", ".join(here))
        out.print(table)
        out.print(f"* the default ({DEFAULT_SAE}, layer {DEFAULT_LAYER}). Files are {escape(release['path'])}; "
                  f"`neuroscope sae pull {escape(release['repo'])} --path layer_N/width_W/average_l0_L` fetches one",
                  highlight=False, soft_wrap=True)


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
