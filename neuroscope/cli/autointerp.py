"""``neuroscope labels generate | score``: LLM auto-interpretation of SAE features and detection scoring."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from neuroscope.cli.calibrate import BatchSize, CorpusPath, Demo, InputNorm, Layer, MaxTokensPerSample, _config
from neuroscope.cli.options import (
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
)
from neuroscope.config import DEFAULT_LABELER, DEFAULT_MODEL
from neuroscope.labels.autointerp import examples as ex_mod

Backend = Annotated[str, typer.Option(help="Model backend: auto, mlx, torch-cuda or torch-cpu.")]
Labeler = Annotated[
    Optional[str], typer.Option(envvar="LABELER_MODEL", show_default=False,
                                help=f"The LLM that writes the labels (default {DEFAULT_LABELER}; env LABELER_MODEL).")
]
LabelerBackend = Annotated[
    str, typer.Option(envvar="LABELER_BACKEND", help="auto (OpenRouter if OPENROUTER_API_KEY is set, else "
                      "Anthropic), openrouter, anthropic, or the base URL of an OpenAI-compatible server.")
]
Concurrency = Annotated[int, typer.Option(help="LLM requests in flight at most.", min=1, max=1000)]
Features = Annotated[Optional[str], typer.Option(help="Only these features, e.g. 0-99,4521.", show_default=False)]
Threshold = Annotated[float, typer.Option(help="The summary counts scores at or above this.", min=0.0, max=1.0)]
Timeout = Annotated[float, typer.Option(help="Seconds per LLM request before it is retried.", min=1.0)]



def register(app: typer.Typer) -> None:
    """Add ``generate`` and ``score`` to ``app`` (the ``labels`` group)."""
    app.command("generate", cls=ReadableCommand)(generate_cmd)
    app.command("score", cls=ReadableCommand)(score_cmd)


def generate_cmd(
    ctx: typer.Context,
    model: Model = DEFAULT_MODEL,
    sae: Sae = None,
    sae_path: SaePath = None,
    sae_local_path: SaeLocal = None,
    sae_layer: Layer = None,
    sae_input_norm: InputNorm = Norm.none,
    backend: Backend = "auto",
    dtype: Annotated[Optional[DType], typer.Option(help="Model dtype (default: as serve picks it).")] = None,
    demo: Demo = False,
    corpus_path: CorpusPath = None,
    samples: Annotated[int, typer.Option(help="Corpus samples to read.", min=1)] = ex_mod.DEFAULT_SAMPLES,
    batch_size: BatchSize = ex_mod.DEFAULT_BATCH_SIZE,
    max_tokens_per_sample: MaxTokensPerSample = ex_mod.DEFAULT_MAX_TOKENS,
    examples_per_feature: Annotated[
        int, typer.Option(help="Top activating windows kept per feature (half shown to the labeler, half held out "
                               "for scoring).", min=1)
    ] = ex_mod.DEFAULT_PER_FEATURE,
    examples: Annotated[
        str, typer.Option(help="Windows shown to the labeler: top (the strongest), quantiles (from across the "
                               "activation range) or mix (about 20 % top, the rest from the range).")
    ] = "mix",
    labeler: Labeler = None,
    labeler_backend: LabelerBackend = "auto",
    concurrency: Concurrency = 50,
    features: Features = None,
    score: Annotated[bool, typer.Option("--score", help="Run detection scoring of the labels afterwards.")] = False,
    threshold: Threshold = 0.75,
    output: Annotated[
        Optional[Path], typer.Option(help="Also write the labels as a plain {index: label} JSON here.")
    ] = None,
    request_timeout: Timeout = 120.0,
) -> None:
    """Collect every feature's top activating windows over a corpus, then ask an LLM for a label per feature."""
    from neuroscope.config import default_labeler
    from neuroscope.labels.autointerp import generate as gen
    from neuroscope.store import paths

    config = _config(ctx, model, sae, sae_path, sae_local_path, sae_layer, sae_input_norm, demo, backend=backend,
                     dtype=dtype.value if dtype else None)
    _check_features(features)
    if labeler is None and labeler_backend.strip().startswith(("http://", "https://")):
        fail("--labeler-backend URL needs --labeler MODEL (or LABELER_MODEL): the model that server runs, whose "
             "name the labels are filed under", 2)
    who = labeler or default_labeler()
    if examples not in gen.EXAMPLE_MODES:
        fail(f"--examples must be one of {', '.join(gen.EXAMPLE_MODES)}, got {examples!r}", 2)
    opts = gen.LabelOptions(who, labeler_backend, concurrency, features, str(output) if output else None,
                            request_timeout, examples=examples)
    exopts = ex_mod.ExamplesOptions(str(corpus_path) if corpus_path else None, samples, examples_per_feature,
                                    batch_size, max_tokens_per_sample)
    out = Console()
    try:
        provider = gen.provider_for(labeler_backend)  # before the long pass: a missing key fails at once
    except gen.GenerateError as exc:
        fail(str(exc))
    try:
        run, ns, tokenizer = gen.collect(config, exopts, console=err)
        _examples_summary(out, run)
        if run.samples_in_corpus < samples:
            err.print(f"[yellow]note:[/] the corpus holds only {run.samples_in_corpus} samples ({samples} asked)",
                      highlight=False)
        result = gen.label(run.examples, ns, tokenizer, provider, opts, console=err)
    except gen.GenerateError as exc:
        fail(str(exc) + demo_hint(ctx, demo))
    fired = int((run.examples.fired > 0).sum())
    out.print(f"labels: {escape(str(result.labels_file))}\n  {result.labeled} labelled now, {result.already} "
              f"already there, {len(result.failed)} failed, {len(result.dead)} dead (never fired; not sent) — "
              f"{fired} of {run.examples.d_sae} features fired\n  {result.input_tokens:,} input + "
              f"{result.output_tokens:,} output tokens in {result.elapsed_s:.1f} s", highlight=False, soft_wrap=True)
    if result.output is not None:
        out.print(f"  copy: {escape(str(result.output))}", highlight=False, soft_wrap=True)
    if result.failed:
        shown = ", ".join(str(f["index"]) for f in result.failed[:10]) + (" …" if len(result.failed) > 10 else "")
        err.print(f"[yellow]note:[/] {len(result.failed)} features failed ({shown}"
                  f"); see {escape(str(paths.autointerp_failed_file(who, ns)))}. Run again to retry them.",
                  highlight=False, soft_wrap=True)
    if score:
        from neuroscope.labels.autointerp import scoring

        sopts = scoring.ScoreOptions(who, who, concurrency, features, threshold, request_timeout)
        try:
            labels = scoring.read_labels(result.labels_file)
            scored = scoring.score(run.examples, ns, tokenizer, labels, provider, sopts, console=err)
        except gen.GenerateError as exc:
            fail(str(exc))
        _score_summary(out, scored, who, who, threshold)
    if result.failed:
        raise typer.Exit(1)


def score_cmd(
    ctx: typer.Context,
    model: Model = DEFAULT_MODEL,
    sae: Sae = None,
    sae_path: SaePath = None,
    sae_local_path: SaeLocal = None,
    sae_layer: Layer = None,
    sae_input_norm: InputNorm = Norm.none,
    backend: Annotated[str, typer.Option(help="As for generate, for the same command line; scoring itself loads no "
                                              "model (it reads the examples generate made).")] = "auto",
    demo: Demo = False,
    labels: Annotated[
        Optional[Path], typer.Option(help="A labels JSONL (or {index: label} JSON); default: the labeler's labels "
                                          "of this model / SAE.", show_default=False)
    ] = None,
    labeler: Labeler = None,
    scorer: Annotated[Optional[str], typer.Option(help="The LLM that scores (default: the labeler).",
                                                  show_default=False)] = None,
    labeler_backend: LabelerBackend = "auto",
    concurrency: Concurrency = 50,
    threshold: Threshold = 0.75,
    features: Features = None,
    request_timeout: Timeout = 120.0,
) -> None:
    """Detection scoring: can an LLM pick, from the label alone, the windows where the feature fires?"""
    from neuroscope.calibration import stats as calibration
    from neuroscope.config import default_labeler
    from neuroscope.core import fixtures
    from neuroscope.labels.autointerp import generate as gen
    from neuroscope.labels.autointerp import scoring
    from neuroscope.store import paths

    config = _config(ctx, model, sae, sae_path, sae_local_path, sae_layer, sae_input_norm, demo, backend=backend)
    _check_features(features)
    if demo:
        fx = fixtures.demo_fixture()
        config.model, config.sae_local_path, config.sae_layer = str(fx.model_dir), str(fx.sae_path), fx.sae_layer
    if config.sae_local_path and not Path(config.sae_local_path).expanduser().exists():
        fail(f"SAE file not found: {config.sae_local_path}")
    ns = calibration.namespace_for(config.model, config.sae, config.sae_path, config.sae_local_path,
                                   config.sae_layer, config.sae_input_norm, demo=demo)
    who = labeler or default_labeler()
    path = labels if labels is not None else paths.autointerp_labels_file(who, ns)
    try:
        provider = gen.provider_for(labeler_backend)
        found = scoring.read_labels(path)
        if labels is not None and labeler is None:  # whose labels: the file says, when it says one name
            names = {str(v.get("labeler")) for v in found.values() if v.get("labeler")}
            who = names.pop() if len(names) == 1 else who
        examples = ex_mod.newest(ns)
        if examples is None:
            fail("no examples for this model / SAE / layer / norm: run `neuroscope labels generate` with the same "
                  "options first")
        tokenizer = _tokenizer(config.model)
        sopts = scoring.ScoreOptions(who, scorer or who, concurrency, features, threshold, request_timeout)
        result = scoring.score(examples, ns, tokenizer, found, provider, sopts, console=err)
    except gen.GenerateError as exc:
        fail(str(exc))
    _score_summary(Console(), result, who, sopts.scorer, threshold)
    if result.failed:
        raise typer.Exit(1)


def _check_features(spec: str | None) -> None:
    """The --features syntax, before anything loads (the range is checked once the SAE's width is known)."""
    from neuroscope.labels.autointerp.store import parse_features

    try:
        parse_features(spec)
    except ValueError as exc:
        fail(str(exc), 2)


def _tokenizer(model: str):
    from neuroscope.core.checkpoint import load_tokenizer, local_dir
    from neuroscope.core.protocol import BackendError, ModelSpec
    from neuroscope.labels.autointerp.generate import GenerateError
    from neuroscope.store.hf import hub_reachable

    local = Path(model).expanduser().is_dir()
    try:
        return load_tokenizer(local_dir(ModelSpec(model, offline=not local and not hub_reachable())))
    except (BackendError, OSError, ValueError) as exc:
        raise GenerateError(str(exc).splitlines()[0] if str(exc) else f"cannot load the tokenizer of {model}") from None


def _examples_summary(out: Console, run) -> None:
    ex = run.examples
    if run.up_to_date:
        what = "up to date"
    else:
        resumed = f", resumed at sample {run.resumed_from}" if run.resumed_from else ""
        rate = run.tokens_processed / run.elapsed_s if run.elapsed_s > 0 else 0.0
        what = f"{rate:,.0f} tokens/s{resumed}"
    out.print(f"examples: {escape(str(ex.directory))}\n  {ex.meta['samples']} samples, {ex.meta['tokens']:,} counted "
              f"tokens, {ex.meta['per_feature']} windows per feature ({what})", highlight=False, soft_wrap=True)
    if ex.meta.get("truncated_positions"):
        err.print(f"[yellow]note:[/] {ex.meta['truncated_positions']:,} tokens had more than {ex.meta['top_k']} "
                  "features firing; their windows miss the weakest ones", highlight=False)


def _score_summary(out: Console, result, labeler: str, scorer: str, threshold: float) -> None:
    out.print(f"scores: {escape(str(result.scores_file))}\n  {result.scored} scored now, {result.already} already "
              f"there, {len(result.failed)} failed, {len(result.unscorable)} without enough windows to score",
              highlight=False, soft_wrap=True)
    s = result.summary(threshold)
    if s is None:
        out.print("no scores yet", highlight=False)
        return
    t = Table(title=f"detection scores of {escape(labeler)}'s labels by {escape(scorer)} (balanced accuracy)",
              title_justify="left")
    for col in ("features", "mean", "25 %", "median", "75 %", f"≥ {threshold:g}"):
        t.add_column(col, justify="right")
    t.add_row(str(s["n"]), f"{s['mean']:.3f}", f"{s['q1']:.3f}", f"{s['median']:.3f}", f"{s['q3']:.3f}",
              f"{100 * s['above']:.1f} %")
    out.print(t)
    if result.failed:
        err.print(f"[yellow]note:[/] {len(result.failed)} features could not be scored: "
                  f"{', '.join(str(f['index']) for f in result.failed[:10])}", highlight=False)
