"""``neuroscope corpus build | show``: the text corpus that calibration and labelling read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from neuroscope.calibration import corpus
from neuroscope.cli.options import ReadableCommand, err, fail, group

app = group(
    help="Build or inspect the text corpus (WikiText from the Hugging Face hub, one .txt per sample).",
)



@app.command("build", cls=ReadableCommand)
def build_cmd(
    samples: Annotated[int, typer.Option(help="How many samples to write.", min=1)] = corpus.DEFAULT_SAMPLES,
    output: Annotated[
        Optional[Path], typer.Option(help="Directory to write (default: <cache>/corpus/<dataset>/<config>/<split>).")
    ] = None,
    dataset: Annotated[str, typer.Option(help="Hub dataset repo (wikitext = Salesforce/wikitext).")] = (
        corpus.DEFAULT_DATASET),
    config: Annotated[str, typer.Option(help="Dataset config.")] = corpus.DEFAULT_CONFIG,
    split: Annotated[str, typer.Option(help="Dataset split.")] = corpus.DEFAULT_SPLIT,
) -> None:
    """Download the dataset's parquet files and write one UTF-8 .txt per sample, plus manifest.json."""
    out = output if output is not None else corpus.default_dir(dataset, config, split)
    try:
        manifest = corpus.build_corpus(
            out, samples_wanted=samples, dataset=dataset, config=config, split=split, console=err
        )
    except (corpus.CorpusError, OSError) as exc:
        fail(str(exc))
    counts, src = manifest["counts"], manifest["source"]
    what = (f"{counts['samples']} samples, {manifest['total_chars']:,} characters, from {src['repo']} "
            f"({src['config']}/{src['split']})")
    state = "up to date" if manifest["up_to_date"] else "built"
    Console().print(f"{state}: {what}\n  {escape(str(out))}", highlight=False, soft_wrap=True)
    if counts["exhausted"]:
        err.print(f"[yellow]note:[/] {src['config']}/{src['split']} holds only {counts['samples']} samples "
                  f"({samples} asked)", highlight=False)


def _preview(text: str, width: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@app.command("show", cls=ReadableCommand)
def show_cmd(
    path: Annotated[Optional[Path], typer.Option(help="A corpus directory (default: the built WikiText one).")] = None,
    previews: Annotated[int, typer.Option(help="How many samples to preview.", min=0)] = 3,
) -> None:
    """Counts, total characters and a few sample previews of a corpus directory."""
    root = (path if path is not None else corpus.default_dir()).expanduser()
    if not root.is_dir():
        hint = "" if path is not None else ": run `neuroscope corpus build`"
        fail(f"no corpus in {root}{hint}")
    try:
        lengths, shown = [], []
        for sample in corpus.iter_corpus(root):
            lengths.append(len(sample.text))
            if len(shown) < previews:
                shown.append(sample)
        manifest = corpus.read_manifest(root)
        intact = manifest is not None and corpus.checksum(corpus.sample_files(root)) == manifest.get("checksum")
    except (corpus.CorpusError, OSError) as exc:
        fail(str(exc))

    out = Console()
    summary = Table.grid(padding=(0, 2))
    summary.add_row("corpus", escape(str(root)))
    if manifest is not None:
        src = manifest["source"]
        summary.add_row("source", escape(f"{src['repo']} {src['config']}/{src['split']} ({len(src['files'])} file(s))"))
        summary.add_row("checksum", "[green]matches the manifest[/]" if intact else
                        "[red]differs from the manifest: files changed since the build[/]")
    summary.add_row("samples", f"{len(lengths):,}")
    summary.add_row("characters", f"{sum(lengths):,}")
    mean = sum(lengths) / len(lengths)
    summary.add_row("per sample", f"mean {mean:,.0f}, min {min(lengths):,}, max {max(lengths):,}")
    out.print(summary)
    if shown:
        table = Table(title="first samples", title_justify="left")
        table.add_column("sample", no_wrap=True, min_width=max(len(s.name) for s in shown))
        table.add_column("chars", no_wrap=True, justify="right", min_width=5)
        table.add_column("preview", no_wrap=True, overflow="ellipsis")
        for sample in shown:
            table.add_row(escape(sample.name), f"{len(sample.text):,}", escape(_preview(sample.text)))
        out.print(table)
