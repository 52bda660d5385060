"""``neuroscope labels fetch | show``: Neuronpedia's explanations into the cache, and a look at the label chain."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from neuroscope.cli.calibrate import Demo, InputNorm, Layer, _config
from neuroscope.cli.options import (
    Labeler,
    LabelThreshold,
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
)
from neuroscope.config import DEFAULT_MODEL, ServeConfig
from neuroscope.labels import aio

app = group(
    help="Feature labels: generate and score them with an LLM, fetch Neuronpedia's, show where each comes from.",
)



class Source(str, Enum):
    neuronpedia = "neuronpedia"


def parse_features(spec: str, d_sae: int) -> list[int]:
    """``4521,3022`` and ranges ``0-99`` (inclusive), in the order given, without repeats; ValueError otherwise."""
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            raise ValueError(f"--features {spec!r} has an empty item")
        lo, sep, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise ValueError(f"--features: {part!r} is not a feature index or a range like 0-99") from None
        if a > b:
            raise ValueError(f"--features: the range {part!r} runs backwards")
        if a < 0 or b >= d_sae:
            raise ValueError(f"--features: {part!r} is out of range: the SAE has {d_sae} features (0..{d_sae - 1})")
        out.extend(i for i in range(a, b + 1) if i not in out)
    return out


def _namespace(config: ServeConfig):
    from neuroscope.calibration import stats as calibration

    if config.sae_local_path and not Path(config.sae_local_path).expanduser().exists():
        fail(f"SAE file not found: {config.sae_local_path}")
    return calibration.namespace_for(config.model, config.sae, config.sae_path, config.sae_local_path,
                                     config.sae_layer, config.sae_input_norm, demo=config.demo)


def _d_sae(config: ServeConfig, ns) -> tuple[int, object | None]:
    """The SAE's width, cheaply (no weights loaded): its calibration file, the SAE file's header (local or in the
    Hugging Face cache), or Neuronpedia's registry. Also the calibration, when there is one."""
    from neuroscope.calibration import stats as calibration
    from neuroscope.core.sae import SAEError, read_d_sae
    from neuroscope.labels.neuronpedia.registry import RegistryError, lookup
    from neuroscope.store import paths

    cal_path = paths.calibration_file(ns)
    if cal_path.is_file():
        try:
            cal = calibration.load(cal_path)
            return int(cal.data["d_sae"]), cal
        except calibration.CalibrationError:
            pass
    file: Path | None = None
    if config.sae_local_path:
        from neuroscope.core import sae_formats

        try:
            return sae_formats.shape(sae_formats.detect(config.sae_local_path))[1], None
        except SAEError as exc:
            fail(str(exc))
    else:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(config.sae, config.sae_path)
        file = Path(hit) if isinstance(hit, str) else None
    if file is not None and file.is_file():
        try:
            return read_d_sae(file), None
        except SAEError as exc:
            fail(str(exc))
    try:
        ids = lookup(ns)
    except RegistryError as exc:
        fail(str(exc))
    if ids is not None:
        return ids.d_sae, None
    fail("cannot tell how many features the SAE has: no calibration file, the SAE file is not on this machine "
          "and Neuronpedia's registry does not know it (run `neuroscope calibrate run`, or pass --sae-local-path)")
    raise AssertionError  # unreachable


def _examples(config: ServeConfig, ns) -> tuple[Callable[[int], str | None] | None, str | None]:
    """Each feature's strongest window from the newest examples run of ``ns`` (`labels generate` makes them),
    with the tokenizer alone — never the model. (None, why) when there is no run or no tokenizer here."""
    from neuroscope.core import checkpoint
    from neuroscope.core.protocol import BackendError, ModelSpec
    from neuroscope.labels.autointerp import examples

    if examples.newest(ns) is None:
        return None, "no examples run (no example windows)"
    try:
        tokenizer = checkpoint.load_tokenizer(checkpoint.local_dir(ModelSpec(config.model, offline=True)))
    except (OSError, ValueError, BackendError) as exc:
        return None, f"no example windows: the tokenizer of {config.model} is not on this machine ({exc})"
    return (lambda i: examples.example_window(ns, i, tokenizer)), None


@app.command("show", cls=ReadableCommand)
def show_cmd(
    ctx: typer.Context,
    features: Annotated[str, typer.Option(help="Feature indices and ranges, e.g. 0-99,4521.", show_default=False)],
    model: Model = DEFAULT_MODEL,
    sae: Sae = None,
    sae_path: SaePath = None,
    sae_local_path: SaeLocal = None,
    sae_layer: Layer = None,
    sae_input_norm: InputNorm = Norm.none,
    demo: Demo = False,
    labeler: Labeler = None,
    labels_path: Annotated[Optional[Path], typer.Option(help="JSON file of feature index -> label (the first "
                                                              "source).")] = None,
    label_threshold: LabelThreshold = 0.5,
) -> None:
    """Each feature's label as `serve` would give it: label, source, score and firing rate (no model loaded)."""
    from neuroscope.core import fixtures
    from neuroscope.labels.sources import build_chain
    from neuroscope.labels.table import LabelError

    config = _config(ctx, model, sae, sae_path, sae_local_path, sae_layer, sae_input_norm, demo, labeler=labeler,
                     label_threshold=label_threshold, labels_path=str(labels_path) if labels_path else None)
    fx = None
    if demo:
        fx = fixtures.demo_fixture()
        config.model, config.sae_local_path, config.sae_layer = str(fx.model_dir), str(fx.sae_path), fx.sae_layer
    ns = _namespace(config)
    d_sae, cal = _d_sae(config, ns)
    try:
        wanted = parse_features(features, d_sae)
    except ValueError as exc:
        fail(str(exc), 2)
    try:
        chain = build_chain(ns, d_sae, labels_path=config.labels_path, labeler=config.labeler,
                            demo_labels_path=fx.labels_path if fx else None, threshold=label_threshold,
                            neuronpedia=not demo)
    except LabelError as exc:
        fail(str(exc))
    rate = cal.data["features"]["firing_rate"] if cal is not None else None
    example, example_note = _examples(config, ns)
    table = Table(title=f"{len(wanted)} feature{'s' if len(wanted) != 1 else ''} of {d_sae:,}", title_justify="left")
    described = any(chain.entry(i).description for i in wanted)
    columns = (("feature", "label") + (("description",) if described else ()) + ("source", "score", "firing rate")
               + (("example",) if example else ()))
    for col in columns:
        table.add_column(col, justify="right" if col in ("feature", "score", "firing rate") else "left",
                         no_wrap=col not in ("label", "description", "example"), overflow="fold")
    for i in wanted:
        e = chain.entry(i)
        score = "" if e.score is None else f"{e.score:.2f}"
        if e.score is not None and e.score < label_threshold:
            score = f"[yellow]{score} low[/]"
        fr = "" if rate is None else f"{100 * rate[i]:.3g} %"
        window = (escape(example(i) or "(never fired)"),) if example else ()
        about = (escape(e.description or ""),) if described else ()
        table.add_row(str(i), escape(e.label), *about, e.source, score, fr, *window)
    out = Console()
    out.print(table)
    np_info = chain.neuronpedia
    where = f"Neuronpedia {np_info.ids}" if np_info.ids else f"Neuronpedia skipped: {np_info.skipped}"
    out.print(f"labeler {escape(config.labeler or _default_labeler())}; {escape(where)}"
              + ("" if cal is not None else "; no calibration (no firing rates)")
              + (f"; {escape(example_note)}" if example_note else "")
              + escape(demo_hint(ctx, demo) if cal is None else ""), highlight=False, soft_wrap=True)
    for w in chain.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)


def _default_labeler() -> str:
    from neuroscope.config import default_labeler

    return default_labeler()


@app.command("fetch", cls=ReadableCommand)
def fetch_cmd(
    ctx: typer.Context,
    source: Annotated[Source, typer.Option(help="Where labels come from: neuronpedia.")] = Source.neuronpedia,
    model: Model = DEFAULT_MODEL,
    sae: Sae = None,
    sae_path: SaePath = None,
    sae_local_path: SaeLocal = None,
    sae_layer: Layer = None,
    sae_input_norm: InputNorm = Norm.none,
    api: Annotated[
        bool, typer.Option("--api/--no-api", help="Ask the per-feature API for what the bulk export lacks.")
    ] = True,
) -> None:
    """Download every Neuronpedia explanation of the SAE (bulk export, then the API) into the cache; resumable."""
    from neuroscope.labels.neuronpedia.bulk import datasets_url, fetch
    from neuroscope.labels.neuronpedia.client import ClientSettings
    from neuroscope.labels.neuronpedia.registry import RegistryError, lookup
    from neuroscope.progress import JobProgress

    config = _config(ctx, model, sae, sae_path, sae_local_path, sae_layer, sae_input_norm, False)
    ns = _namespace(config)
    try:
        ids = lookup(ns)
    except RegistryError as exc:
        fail(str(exc))
    if ids is None:
        what = config.sae_local_path or f"{config.sae}/{config.sae_path}"
        fail(f"Neuronpedia's registry does not know {what} with model {config.model}: no Neuronpedia source "
              "to fetch (see neuroscope/data/neuronpedia.json)")
    base = datasets_url()
    with JobProgress(err) as progress:
        result = aio.run(fetch(ids, settings=ClientSettings.from_env(), base=base, api=api, progress=progress))
    out = Console()
    export = (f"export: {result.batches_merged} batches merged ({result.export_labels:,} labels)"
              + (f", {result.batches_skipped} merged before" if result.batches_skipped else "")
              + (", complete" if result.export_complete else ""))
    out.print(f"Neuronpedia {ids}: {result.cached:,} of {ids.d_sae:,} features labelled in the cache", highlight=False)
    out.print(f"  {export}", highlight=False, soft_wrap=True)
    if api:
        out.print(f"  API: {result.api_asked:,} asked, {result.api_labels:,} labelled, {result.api_none:,} without "
                  f"an explanation, {result.api_gave_up:,} given up", highlight=False)
    from neuroscope.labels.neuronpedia.cache import NeuronpediaCache

    out.print(f"  {escape(str(NeuronpediaCache(ids.model_id, ids.source_id).path))}", highlight=False, soft_wrap=True)
    for problem in (result.export_error, result.api_error):
        if problem:
            err.print(f"[yellow]warning:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    if result.api_error or (result.export_error and not api):
        raise typer.Exit(1)
