"""``neuroscope push`` / ``neuroscope pull``: calibration and labels through a Hugging Face dataset repo."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from neuroscope import config
from neuroscope.cli.options import ReadableCommand, err, fail
from neuroscope.store import datarepo, trash


def _kinds(kinds: list[str]) -> str:
    counts = Counter(kinds)
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


def push_cmd(
    repo: Annotated[
        Optional[str], typer.Option(help=f"Hugging Face dataset repo to write (default: ${config.DATA_REPO_ENV}, "
                                         "when set).", show_default=False)
    ] = None,
    message: Annotated[str, typer.Option(help="Commit message.")] = "Neuroscope calibration and labels",
    private: Annotated[bool, typer.Option("--private", help="Create the repo private (when it does not exist).")] = False,
) -> None:
    """Upload calibration and labels to a Hugging Face dataset repo, in one commit with a manifest.

    Calibration, auto-interp labels of every labeler (legacy too), their scores, failed and dead lists, and the
    Neuronpedia cache. Needs a write token (`hf auth login` or HF_TOKEN).
    """
    import os

    target = repo or os.environ.get(config.DATA_REPO_ENV)
    if not target:
        fail(f"push needs --repo ID (a dataset repo you can write to), or {config.DATA_REPO_ENV}", 2)
    try:
        with err.status(f"pushing to {escape(target)}…"):  # drawn on a terminal only
            files, url = datarepo.push(target, message, private=private)
    except datarepo.DataRepoError as exc:
        fail(str(exc))
    size = sum(f.size for f in files)
    Console().print(f"pushed {len(files)} file(s) ({_kinds([f.kind for f in files])}; {trash.human(size)}) and "
                    f"{datarepo.MANIFEST} to {escape(target)}\n  {escape(url)}", highlight=False, soft_wrap=True)


def pull_cmd(
    repo: Annotated[
        Optional[str], typer.Option(help=f"Hugging Face dataset repo to read (default: ${config.DATA_REPO_ENV}, else "
                                         f"{config.DEFAULT_DATA_REPO}).", show_default=False)
    ] = None,
) -> None:
    """Install calibration and labels from a Hugging Face dataset repo, every checksum verified first.

    Local files that differ go to the trash first (`neuroscope clean undo` brings them back); identical ones are
    left alone. `neuroscope serve` uses what was pulled right away.
    """
    target = repo or config.data_repo()
    try:
        result = datarepo.pull(target, console=err)
    except datarepo.DataRepoError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot install {target}: {exc}")
    out = Console()
    for name in result.installed:
        out.print(f"  installed {escape(name)}", highlight=False, soft_wrap=True)
    for name in result.replaced:
        out.print(f"  replaced  {escape(name)}", highlight=False, soft_wrap=True)
    total = len(result.installed) + len(result.replaced) + len(result.unchanged)
    out.print(f"pulled {escape(target)}: {len(result.installed)} new, {len(result.replaced)} replaced, "
              f"{len(result.unchanged)} already up to date (of {total})", highlight=False, soft_wrap=True)
    if result.trash_entry is not None:
        out.print(f"the replaced local files are in the trash ({escape(str(result.trash_entry))}): "
                  "`neuroscope clean undo` brings them back", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("push", cls=ReadableCommand)(push_cmd)
    app.command("pull", cls=ReadableCommand)(pull_cmd)
