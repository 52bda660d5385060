"""``python -m benchmarks``: per-token SAE latency and instrumented decode speed on every backend here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from benchmarks import targets
from benchmarks.suite import GEMMA_D_MODEL, SUITES, customise, run
from neuroscope.core.protocol import BackendError
from neuroscope.store.paths import bench_dir

RESULTS = Path(__file__).resolve().parent / "results"
app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command()
def main(
    smoke: Annotated[bool, typer.Option(help="Seconds-long run at tiny shapes (the test suite runs it).")] = False,
    full: Annotated[bool, typer.Option(help="Big shapes: d_sae 16384 and 65536, a Gemma-2-2B-shaped model.")] = False,
    shape: Annotated[Optional[str], typer.Option(help="Model for decode and corpus: tiny, gemma-2-100m or "
                                                      "gemma-2-2b.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Decode a real model (hub id in the cache, or a dir).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="Model dtype: float32, bfloat16, float16.")] = None,
    layer: Annotated[Optional[int], typer.Option(help="SAE layer for --model (default: 3/4 of the depth).")] = None,
    d_sae: Annotated[Optional[list[int]], typer.Option(help="SAE width(s) at d_model 2304 (repeatable).")] = None,
    backends: Annotated[str, typer.Option(help=f"Comma-separated subset of {','.join(targets.ALL)}.")] = ",".join(
        targets.ALL
    ),
    tokens: Annotated[Optional[int], typer.Option(help="New tokens per decode run.", min=2)] = None,
    repeats: Annotated[Optional[int], typer.Option(help="Decode runs per mode.", min=1)] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Features per token.", min=1)] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (default: one per core).", min=1)] = None,
    no_sae: Annotated[bool, typer.Option("--no-sae", help="Skip the SAE micro-benchmark.")] = False,
    no_decode: Annotated[bool, typer.Option("--no-decode", help="Skip the decode benchmark.")] = False,
    no_corpus: Annotated[bool, typer.Option("--no-corpus", help="Skip the corpus-pass benchmark.")] = False,
    no_compiled: Annotated[bool, typer.Option("--no-compiled", help="Skip the torch compiled engine's decode "
                                                                    "modes (they compile first).")] = False,
    no_steering: Annotated[bool, typer.Option("--no-steering", help="Skip the steered decode modes.")] = False,
    no_concurrency: Annotated[bool, typer.Option("--no-concurrency", help="Skip the concurrent-requests table "
                                                                          "(--max-batch 8 beside 1).")] = False,
    prompt_tokens: Annotated[Optional[int], typer.Option(help="Decode prompt length in tokens.", min=1)] = None,
    out: Annotated[Path, typer.Option(help="Where the JSON record goes.")] = RESULTS,
    cache: Annotated[Optional[Path], typer.Option(help="Where benchmark checkpoints are built.")] = None,
) -> None:
    if smoke and full:
        raise typer.BadParameter("choose --smoke or --full, not both")
    if shape is not None and shape not in ("tiny", "gemma-2-100m", "gemma-2-2b"):
        raise typer.BadParameter(f"--shape must be tiny, gemma-2-100m or gemma-2-2b, not {shape!r}")
    chosen = tuple(b.strip() for b in backends.split(",") if b.strip())
    unknown = [b for b in chosen if b not in targets.ALL]
    if unknown:
        raise typer.BadParameter(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(targets.ALL)}")
    base = SUITES["smoke" if smoke else "full" if full else "default"]
    suite = customise(
        base, model=model, dtype=dtype, layer=layer, tokens=tokens, repeats=repeats, top_k=top_k,
        decode_shape=shape, backends=chosen, torch_threads=threads, prompt_tokens=prompt_tokens,
    )
    if d_sae:
        suite.sae_shapes = [(GEMMA_D_MODEL, d) for d in d_sae]
        suite.d_sae_model = d_sae[0]
    if no_sae:
        suite.sae_shapes = []
    if no_decode:
        suite.decode = False
    if no_corpus:
        suite.corpus = False
    if no_compiled:
        suite.compiled = False
    if no_steering:
        suite.steering = False
    if no_concurrency:
        suite.concurrency = ()
    try:
        run(suite, out_dir=out, cache=cache or bench_dir())
    except BackendError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
