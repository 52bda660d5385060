"""The root of the ``neuroscope`` command line (typer + rich): the app, its options, ``serve`` and ``backends``;
the command groups join it from their own modules. Commands build a config and call one function."""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from neuroscope import __version__
from neuroscope.cli.calibrate import app as calibrate_app
from neuroscope.cli.clean import app as clean_app
from neuroscope.cli.corpus import app as corpus_app
from neuroscope.cli.features import app as features_app
from neuroscope.cli.labels import app as labels_app
from neuroscope.cli.models import models_app, sae_app
from neuroscope.cli.options import (
    LAYER_HELP,
    DType,
    Labeler,
    LabelThreshold,
    Model,
    Norm,
    ReadableCommand,
    Sae,
    SAEDType,
    SaeLocal,
    SaePath,
    err,
    fail,
    group,
    sae_fields,
)
from neuroscope.config import DEFAULT_MODEL, ServeConfig
from neuroscope.server.origins import split_origins

app = group(
    name="neuroscope",
    help="An SAE-instrumented LLM server: OpenAI-compatible chat plus a live stream of SAE features per token.",
)


def serve(config: ServeConfig) -> int:  # patched in tests; imports the server lazily
    from neuroscope.server.serve import serve as _serve

    return _serve(config, err)


class Engine(str, Enum):
    auto = "auto"
    eager = "eager"
    compiled = "compiled"


class FilterMode(str, Enum):
    none = "none"
    frequency = "frequency"
    surprise = "surprise"
    combined = "combined"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"neuroscope {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Neuroscope."""



@app.command("serve", cls=ReadableCommand)
def serve_cmd(
    ctx: typer.Context,
    model: Model = DEFAULT_MODEL,
    sae: Sae = None,
    sae_path: SaePath = None,
    sae_local_path: SaeLocal = None,
    sae_layer: Annotated[Optional[int], typer.Option(help=LAYER_HELP, min=0)] = None,
    top_k: Annotated[int, typer.Option(help="Features reported per token.", min=1, max=1000)] = 10,
    port: Annotated[int, typer.Option(help="Port of the OpenAI-compatible chat API.", min=0, max=65535)] = 8080,
    features_port: Annotated[int, typer.Option(help="Port of the feature stream.", min=0, max=65535)] = 8081,
    backend: Annotated[str, typer.Option(help="auto, mlx, torch-cuda or torch-cpu.")] = "auto",
    host: Annotated[str, typer.Option(help="Address to bind both ports to.")] = "127.0.0.1",
    dtype: Annotated[
        Optional[DType], typer.Option(help="Model dtype: float32, bfloat16 or float16 (default torch: bfloat16 on CUDA, "
                                    "float32 on CPU; mlx: as stored).")
    ] = None,
    engine: Annotated[
        Engine, typer.Option(help="torch decode step: compiled (torch.compile; CUDA graphs on a GPU; compiles at "
                                  "start-up), eager, or auto (compiled on torch-cuda, eager on torch-cpu).")
    ] = Engine.auto,
    sae_input_norm: Annotated[
        Norm, typer.Option(help="none: the raw residual (Gemma Scope); rms: divide each vector by its RMS.")
    ] = Norm.none,
    sae_dtype: Annotated[
        SAEDType, typer.Option(help="SAE weights in memory: float32 or bfloat16 (half the memory; encode still sums in "
                                    "float32).")
    ] = SAEDType.float32,
    labels_path: Annotated[Optional[Path], typer.Option(help="JSON file of feature index -> label (the first "
                                                              "label source).")] = None,
    labeler: Labeler = None,
    label_threshold: LabelThreshold = 0.5,
    neuronpedia: Annotated[
        bool, typer.Option("--neuronpedia/--no-neuronpedia",
                           help="Ask Neuronpedia, in the background, for labels of features no better source names.")
    ] = True,
    feature_filter: Annotated[
        FilterMode, typer.Option(help="From calibration: frequency hides always-on features, surprise ranks by "
                                      "how unusual an activation is, combined does both; none ranks raw.")
    ] = FilterMode.combined,
    filter_threshold: Annotated[
        float, typer.Option(help="frequency / combined: hide features firing on more than this fraction of tokens.",
                            min=0.0, max=1.0)
    ] = 0.5,
    calibration_path: Annotated[
        Optional[Path], typer.Option(help="Calibration JSON (default: the one calibrated for this model / SAE / "
                                          "layer / norm, if any).")
    ] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Serve the built-in offline demo model (random weights).")] = False,
    max_tokens: Annotated[
        int, typer.Option(help="Completion length when a request does not set max_tokens.", min=1)
    ] = 1024,
    allowed_origins: Annotated[
        str, typer.Option(help="Browser origins allowed besides loopback: a comma list of scheme://host[:port|:*], "
                               "or * for any.")
    ] = "",
    allowed_hosts: Annotated[
        str, typer.Option(help="Host names to answer to besides loopback and the bind address (a comma list, or * "
                               "for any), e.g. behind a reverse proxy; other names get 403.")
    ] = "",
    api_key: Annotated[
        Optional[str], typer.Option(envvar="NEUROSCOPE_API_KEY", show_default=False,
                                    help="Require this key (Authorization: Bearer) on every endpoint but /health.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "warning",
    max_queue: Annotated[
        int, typer.Option(help="Requests that may wait for a free batch row; beyond it a request gets 429.", min=0)
    ] = 64,
    max_batch: Annotated[
        int, typer.Option(help="Requests decoded together in one step (continuous batching); 1: one at a time.",
                          min=1)
    ] = 8,
    prefill_chunk: Annotated[
        int, typer.Option(help="Prompt tokens per prefill forward; a long prompt's chunks alternate with the "
                               "running requests' steps.", min=1)
    ] = 512,
    max_context: Annotated[
        Optional[int], typer.Option(help="Prompt + completion tokens a request may use (the KV cache allocated per "
                                         "batch row at start-up); longer requests get 400. Default: the model's "
                                         "context length, at most 8192 under --max-batch > 1.", min=2, show_default=False)
    ] = None,
    served_model_name: Annotated[
        Optional[list[str]], typer.Option(help="Another name the model answers to in requests (repeatable); the "
                                               "model id and its last path component always work.",
                                          show_default=False)
    ] = None,
) -> None:
    """Serve chat on --port and the live feature stream on --features-port."""
    from neuroscope.runtime import StartupError

    # typer may carry its own click: compare the source by name
    def given(p: str) -> bool:
        return getattr(ctx.get_parameter_source(p), "name", "DEFAULT") != "DEFAULT"

    defaults = not any(given(p) for p in ("model", "sae", "sae_path", "sae_local_path"))
    if demo:
        clash = [f"--{p.replace('_', '-')}" for p in ("model", "sae", "sae_path", "sae_local_path", "sae_layer")
                 if given(p)]
        if clash:
            fail(f"--demo serves the built-in demo model and SAE; it cannot be combined with {', '.join(clash)}", 2)
    config = ServeConfig(
        **sae_fields(ctx, model, sae, sae_path, sae_local_path, sae_layer),
        top_k=top_k,
        host=host,
        port=port,
        features_port=features_port,
        backend=backend,
        dtype=dtype.value if dtype else None,
        engine=engine.value,
        sae_input_norm=sae_input_norm.value,
        sae_dtype=sae_dtype.value,
        labels_path=str(labels_path) if labels_path else None,
        labeler=labeler,
        label_threshold=label_threshold,
        neuronpedia=neuronpedia,
        feature_filter=feature_filter.value,
        filter_threshold=filter_threshold,
        calibration_path=str(calibration_path) if calibration_path else None,
        demo=demo,
        max_tokens=max_tokens,
        demo_fallback=defaults and not demo,
        allowed_origins=split_origins(allowed_origins),
        allowed_hosts=split_origins(allowed_hosts),
        api_key=api_key,
        max_queue=max_queue,
        max_batch=max_batch,
        prefill_chunk=prefill_chunk,
        max_context=max_context,
        served_model_names=tuple(served_model_name or ()),
    )
    try:
        config.validate()
    except ValueError as exc:
        fail(str(exc), 2)
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown --log-level {log_level!r}", 2)
    from rich.logging import RichHandler

    logging.basicConfig(level=level, handlers=[RichHandler(console=err, show_path=False)], format="%(message)s")
    try:
        code = serve(config)
    except StartupError as exc:
        fail(str(exc))
    raise typer.Exit(code)


@app.command("backends", cls=ReadableCommand)
def backends_cmd() -> None:
    """List the backends and whether each is available on this machine."""
    from rich.markup import escape
    from rich.table import Table

    from neuroscope.core import registry

    avail = set(registry.available())
    table = Table("backend", "available", "install")
    for name in registry.names():
        ok = name in avail
        table.add_row(name, "[green]yes[/]" if ok else "[red]no[/]", "" if ok else escape(registry.install_hint(name)))
    Console().print(table)


app.add_typer(corpus_app, name="corpus")
app.add_typer(calibrate_app, name="calibrate")
app.add_typer(clean_app, name="clean")
app.add_typer(models_app, name="models")
app.add_typer(sae_app, name="sae")
app.add_typer(features_app, name="features")

from neuroscope.cli import autointerp as cli_autointerp  # noqa: E402  (labels generate / score)

cli_autointerp.register(labels_app)
app.add_typer(labels_app, name="labels")

from neuroscope.cli import steer as cli_steer  # noqa: E402  (the steer command lives in its own module)

cli_steer.register(app)

from neuroscope.cli import push_pull  # noqa: E402  (push / pull)

push_pull.register(app)


def main() -> None:
    from dotenv import load_dotenv

    load_dotenv(Path.cwd() / ".env", override=False)
    app()
