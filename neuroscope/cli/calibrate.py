"""``neuroscope calibrate run | show``: calibration statistics over a text corpus, and a look at them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from neuroscope.calibration import run as calibrate
from neuroscope.cli.options import (
    LAYER_HELP,
    DType,
    Model,
    Norm,
    ReadableCommand,
    Sae,
    SaeLocal,
    SaePath,
    demo_hint,
    err,
    fail,
    group,
    sae_fields,
)
from neuroscope.config import DEFAULT_MODEL, ServeConfig

app = group(
    help="Calibration statistics (how often and how strongly each SAE feature fires over a corpus) for the filters.",
)



# the model / SAE options of `serve`, shared by both commands
Layer = Annotated[Optional[int], typer.Option(help=LAYER_HELP, min=0)]
InputNorm = Annotated[Norm, typer.Option(help="none: the raw residual (Gemma Scope); rms: divide by its RMS.")]
Demo = Annotated[bool, typer.Option("--demo", help="The built-in offline demo model and SAE.")]
# the corpus pass's options, shared with `labels generate`
CorpusPath = Annotated[
    Optional[Path], typer.Option(help="A directory of .txt files (default: the WikiText corpus, built if needed).")
]
BatchSize = Annotated[int, typer.Option(help="Samples per forward pass.", min=1)]
MaxTokensPerSample = Annotated[
    int, typer.Option(help="Tokens per sample, BOS included (longer samples are cut).", min=2)
]


def _config(ctx: typer.Context, model: str, sae: str | None, sae_path: str | None, sae_local_path: Path | None,
            sae_layer: int | None, norm: Norm, demo: bool, **extra: Any) -> ServeConfig:
    if demo:  # as `serve --demo`: the demo's own model and SAE, never mixed with others
        clash = [f"--{p.replace('_', '-')}" for p in ("model", "sae", "sae_path", "sae_local_path", "sae_layer")
                 if getattr(ctx.get_parameter_source(p), "name", "DEFAULT") != "DEFAULT"]
        if clash:
            fail(f"--demo uses the built-in demo model and SAE; it cannot be combined with {', '.join(clash)}", 2)
    config = ServeConfig(**sae_fields(ctx, model, sae, sae_path, sae_local_path, sae_layer),
                         sae_input_norm=norm.value, demo=demo, **extra)
    try:
        config.validate()
    except ValueError as exc:
        fail(str(exc), 2)
    from neuroscope.core.sae import SAEError
    from neuroscope.runtime import resolve_sae_layer

    try:
        return resolve_sae_layer(config)  # the layer the namespaces and the panel see, from the SAE's config
    except SAEError as exc:
        fail(str(exc))


@app.command("run", cls=ReadableCommand)
def run_cmd(
    ctx: typer.Context,
    model: Model = DEFAULT_MODEL,
    sae: Sae = None,
    sae_path: SaePath = None,
    sae_local_path: SaeLocal = None,
    sae_layer: Layer = None,
    sae_input_norm: InputNorm = Norm.none,
    backend: Annotated[str, typer.Option(help="auto, mlx, torch-cuda or torch-cpu.")] = "auto",
    dtype: Annotated[
        Optional[DType], typer.Option(help="Model dtype (torch: bfloat16 on CUDA, float32 on CPU; mlx: as stored).")
    ] = None,
    demo: Demo = False,
    corpus_path: CorpusPath = None,
    samples: Annotated[int, typer.Option(help="How many corpus samples to read.", min=1)] = calibrate.DEFAULT_SAMPLES,
    batch_size: BatchSize = calibrate.DEFAULT_BATCH_SIZE,
    max_tokens_per_sample: MaxTokensPerSample = calibrate.DEFAULT_MAX_TOKENS,
    output: Annotated[
        Optional[Path], typer.Option(help="Where to write the calibration JSON (default: the cache, namespaced).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Start over even if a finished or partial run exists.")
    ] = False,
    labels_path: Annotated[Optional[Path], typer.Option(help="JSON label map, for the summary.")] = None,
) -> None:
    """Run the corpus pass and write the calibration statistics (resumes a killed run)."""
    config = _config(ctx, model, sae, sae_path, sae_local_path, sae_layer, sae_input_norm, demo, backend=backend,
                     dtype=dtype.value if dtype else None, labels_path=str(labels_path) if labels_path else None)
    opts = calibrate.RunOptions(corpus_path=str(corpus_path) if corpus_path else None, samples=samples,
                                batch_size=batch_size, max_tokens_per_sample=max_tokens_per_sample,
                                output=str(output) if output else None, force=force)
    try:
        result = calibrate.run(config, opts, console=err)
    except calibrate.CalibrateError as exc:
        fail(str(exc) + demo_hint(ctx, demo))
    out = Console()
    where = escape(str(result.output))
    if result.up_to_date:
        out.print(f"up to date: {where} (same model, SAE, corpus and options; --force to run again)", highlight=False,
                  soft_wrap=True)
    else:
        resumed = f", resumed at sample {result.resumed_from}" if result.resumed_from else ""
        rate = result.tokens_processed / result.elapsed_s if result.elapsed_s > 0 else 0.0
        out.print(f"wrote {where}\n  {result.data['samples']} samples, {result.data['tokens']:,} counted tokens, "
                  f"{rate:,.0f} tokens/s{resumed}", highlight=False, soft_wrap=True)
    if result.samples_in_corpus < samples:
        err.print(f"[yellow]note:[/] the corpus holds only {result.samples_in_corpus} samples ({samples} asked)",
                  highlight=False)
    _summary(out, result.data, result.labels, top=10, rarest=False)


@app.command("show", cls=ReadableCommand)
def show_cmd(
    ctx: typer.Context,
    stats: Annotated[
        Optional[Path], typer.Option(help="A calibration JSON (default: the one for the model/SAE options below).")
    ] = None,
    top: Annotated[int, typer.Option(help="Rows in the densest and rarest tables.", min=1)] = 10,
    model: Model = DEFAULT_MODEL,
    sae: Sae = None,
    sae_path: SaePath = None,
    sae_local_path: SaeLocal = None,
    sae_layer: Layer = None,
    sae_input_norm: InputNorm = Norm.none,
    demo: Demo = False,
    labels_path: Annotated[Optional[Path], typer.Option(help="JSON label map (feature index -> label).")] = None,
) -> None:
    """The summary of a calibration file and its densest and rarest features, with labels where known."""
    from neuroscope.calibration import stats as calibration
    from neuroscope.core import fixtures
    from neuroscope.labels.table import LabelError, Labels
    from neuroscope.store import paths

    config = _config(ctx, model, sae, sae_path, sae_local_path, sae_layer, sae_input_norm, demo)
    if demo:
        fx = fixtures.demo_fixture()
        config.model, config.sae_local_path, config.sae_layer = str(fx.model_dir), str(fx.sae_path), fx.sae_layer
        labels_path = labels_path or fx.labels_path
    if stats is None:
        if config.sae_local_path and not Path(config.sae_local_path).expanduser().exists():
            fail(f"SAE file not found: {config.sae_local_path}")
        ns = calibration.namespace_for(config.model, config.sae, config.sae_path, config.sae_local_path,
                                       config.sae_layer, config.sae_input_norm, demo=demo)
        path = paths.calibration_file(ns)
        if not path.is_file():
            fail(f"no calibration for this model / SAE / layer / norm in {path}: run `neuroscope calibrate run` "
                 f"with the same options, or pass --stats PATH{demo_hint(ctx, demo, always=True)}")
    else:
        path = stats
    try:
        data = calibrate.load_file(path).data
        labels = Labels.load(labels_path, data["d_sae"])
    except (calibrate.CalibrateError, LabelError) as exc:
        fail(str(exc))
    out = Console()
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold cyan", justify="right", no_wrap=True)
    head.add_column(overflow="fold")
    head.add_row("file", escape(str(path)))
    head.add_row("model", escape(str(data.get("model"))))
    sae_name = data.get("sae") if data.get("sae_path") is None else f"{data.get('sae')}/{data.get('sae_path')}"
    head.add_row("SAE", f"{escape(str(sae_name))}  ({data['d_sae']} features)")
    head.add_row("layer", f"output of block {data.get('layer')}  (input norm: {data.get('sae_input_norm')})")
    head.add_row("corpus", f"{data.get('samples')} samples, {data['tokens']:,} counted tokens")
    head.add_row("created", escape(str(data.get("created"))))
    out.print(head)
    _summary(out, data, labels, top=top, rarest=True)


def _summary(out: Console, data: dict, labels, *, top: int, rarest: bool) -> None:
    s = data["summary"]
    d = data["d_sae"]
    out.print(f"dead {s['dead']:,} of {d:,} (never fired)  ·  dense {s['dense']:,} (firing on more than 10 % of "
              f"tokens)  ·  mean L0 {s['mean_l0']:.1f}", highlight=False)
    out.print(_table(f"{min(top, d)} densest features", calibrate.densest(data, top), data, labels))
    if rarest:
        rare = calibrate.rarest(data, top)
        if rare:
            out.print(_table(f"{len(rare)} rarest features that fired", rare, data, labels))


def _table(title: str, ids: list[int], data: dict, labels) -> Table:
    f = data["features"]
    t = Table(title=title, title_justify="left")
    for col in ("feature", "firing rate", "mean", "std", "max", "label"):
        t.add_column(col, justify="left" if col == "label" else "right", no_wrap=col != "label")
    for i in ids:
        t.add_row(str(i), f"{100 * f['firing_rate'][i]:.3g} %", f"{f['mean'][i]:.3g}", f"{f['std'][i]:.3g}",
                  f"{f['max'][i]:.3g}", escape(labels.known(i) or ""))
    return t
