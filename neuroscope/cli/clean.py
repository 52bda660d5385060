"""``neuroscope clean corpus | checkpoints | labels | calibration | compile | all | show | undo | empty``:
reversible."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from neuroscope.cli.options import ReadableCommand, fail, group
from neuroscope.store import clean, paths, trash

app = group(
    help="Move generated or downloaded data to the trash (undo brings it back); show, undo or empty the trash. "
         "The Hugging Face cache (models, SAEs) is never touched.",
)

_HELP = {
    "corpus": "The text corpus Neuroscope downloaded (never a --corpus-path of yours).",
    "checkpoints": "Corpus-pass checkpoints of calibration and label examples.",
    "labels": "Auto-interp labels of every labeler (with scores, failures, dead lists), label examples and the "
              "Neuronpedia cache.",
    "calibration": "Calibration statistics.",
    "compile": "The compiled decode step's kernels (torch inductor's cache of --engine compiled; rebuilt on the next "
               "compiled start).",
    "all": "All of the above, as one trash entry.",
}



def _clean(what: str) -> None:
    try:
        entry = clean.clean(what)
    except (OSError, trash.TrashError) as exc:
        fail(f"cannot clean {what}: {exc}")
    out = Console()
    if entry is None:
        data = "data" if what == "all" else f"{what} data"
        out.print(f"nothing to clean: no {data} in {escape(str(paths.cache_dir()))}", highlight=False)
        return
    for item in entry.items:
        out.print(f"  moved {escape(item.original)} ({trash.human(item.size)})", highlight=False, soft_wrap=True)
    out.print(f"moved {len(entry.items)} item(s), {trash.human(entry.size)}, to the trash: "
              f"{escape(str(entry.path))}\n`neuroscope clean undo` brings them back; `neuroscope clean empty` "
              "frees the space.", highlight=False, soft_wrap=True)


def _make(what: str):
    def command() -> None:
        _clean(what)

    command.__doc__ = _HELP[what]
    return command


for _what in clean.TARGETS:
    app.command(_what, cls=ReadableCommand)(_make(_what))


def _interactive() -> bool:
    return sys.stdin.isatty()


def _age(created: str) -> str:
    try:
        then = datetime.fromisoformat(created)
    except ValueError:
        return created
    return then.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@app.command("show", cls=ReadableCommand)
def show_cmd() -> None:
    """List the trash, newest first, with sizes."""
    try:
        found = trash.entries()
    except trash.TrashError as exc:
        fail(str(exc))
    out = Console()
    if not found:
        out.print("the trash is empty", highlight=False)
        return
    table = Table("trashed", "what", "items", "size", "from", title=escape(str(paths.trash_dir())),
                  title_justify="left")
    for column in table.columns:  # wrapped, never cut short
        column.overflow = "fold"
    for entry in found:
        moved = [i for i in entry.items if i.moved]
        origins = ", ".join(sorted({str(Path(i.original).parent) for i in moved}))
        table.add_row(_age(entry.created), escape(entry.what), str(len(moved)), trash.human(entry.size),
                      escape(origins))
    out.print(table)
    out.print(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}, "
              f"{trash.human(sum(e.size for e in found))}", highlight=False)


@app.command("undo", cls=ReadableCommand)
def undo_cmd() -> None:
    """Restore the most recently trashed entry to its original paths (never overwriting anything made since)."""
    try:
        found = trash.entries()
        if not found:
            Console().print("the trash is empty: nothing to undo", highlight=False)
            return
        entry = found[0]
        restored = trash.restore(entry)
    except (OSError, trash.TrashError) as exc:
        fail(str(exc))
    out = Console()
    for item in restored:
        out.print(f"  restored {escape(item.original)} ({trash.human(item.size)})", highlight=False, soft_wrap=True)
    out.print(f"restored {len(restored)} item(s) of {escape(entry.what)} "
              f"({trash.human(sum(i.size for i in restored))}), trashed {_age(entry.created)}", highlight=False)


@app.command("empty", cls=ReadableCommand)
def empty_cmd(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete the trash permanently (asks first; without a terminal, only with --yes)."""
    try:
        found = trash.entries()
    except trash.TrashError:
        found = []
    root = paths.trash_dir()
    if not root.is_dir() or not any(root.iterdir()):
        Console().print("the trash is empty", highlight=False)
        return
    size = trash.tree_size(root)
    if not yes:
        if not _interactive():
            fail("not asking without a terminal: pass --yes to delete the trash permanently")
        if not typer.confirm(f"Delete {len(found)} trash entr{'y' if len(found) == 1 else 'ies'} "
                             f"({trash.human(size)}) permanently?", default=False):
            Console().print("nothing deleted", highlight=False)
            raise typer.Exit(1)
    try:
        count, size = trash.empty()
    except OSError as exc:
        fail(f"cannot empty the trash: {exc}")
    Console().print(f"deleted {count} trash entr{'y' if count == 1 else 'ies'}, freed {trash.human(size)}",
                    highlight=False)
