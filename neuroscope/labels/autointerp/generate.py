"""``neuroscope labels generate``: the examples pass (phase 1), then one LLM call per feature that fired (phase 2).

Labels go to :func:`neuroscope.store.paths.autointerp_labels_file` as JSON lines, exactly::

    {"index": int, "label": str, "description": str, "labeler": str, "prompt_sha256": str,
     "input_tokens": int, "output_tokens": int}

each appended, flushed and fsynced when its answer arrives; a re-run skips the features already there. The
labeler sees windows of even rank (1st, 3rd, …) — of a feature's top-N, of its activation-range sample, or a mix
(``--examples top|quantiles|mix``, mix by default: about 20 % top); those of odd rank of both are held out for
detection scoring, so a label is never scored on the windows it was written from.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from neuroscope.calibration import run as calibrate
from neuroscope.config import ServeConfig
from neuroscope.labels import aio
from neuroscope.labels.autointerp import examples as ex_mod
from neuroscope.labels.autointerp import prompts, store
from neuroscope.labels.autointerp.examples import Examples, ExamplesError, ExamplesOptions, ExamplesRun
from neuroscope.labels.autointerp.jobs import run_all
from neuroscope.labels.autointerp.llm import FatalLLMError, LLMClient, LLMError, Provider, resolve_provider
from neuroscope.store import atomic, paths

LABEL_FIELDS = ("index", "label", "description", "labeler", "prompt_sha256", "input_tokens", "output_tokens")


class GenerateError(RuntimeError):
    """Labelling cannot go on; the message is one user-facing line."""


@dataclass
class LabelOptions:
    labeler: str
    backend: str = "auto"
    concurrency: int = 50
    features: str | None = None  # "0-99,4521"
    output: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 6
    examples: str = "mix"  # which windows the labeller sees: top, quantiles or mix (see label_windows)


@dataclass
class LabelResult:
    labels_file: Path
    labeled: int = 0  # in this run
    already: int = 0  # found in the file from an earlier run
    failed: list[dict[str, Any]] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    elapsed_s: float = 0.0
    output: Path | None = None


EXAMPLE_MODES = ("top", "quantiles", "mix")
MIX_TOP = 0.2  # in mix, this share of the labeller's windows are top windows, the rest from across the range


def label_windows(examples: Examples, index: int, mode: str = "mix") -> list[ex_mod.Window]:
    """The windows the labeller sees, strongest first: the even-rank ones of the top windows (``top``), of the
    activation-range sample (``quantiles``), or about 20 % top and the rest from the range (``mix``, EleutherAI
    delphi's default). A run without a range sample gives top windows in every mode."""
    top = examples.windows(index)[0::2]
    spread = examples.range_windows(index)[0::2]
    if mode == "top" or not spread:
        return top
    if mode == "quantiles":
        return spread
    if mode != "mix":
        raise ValueError(f"--examples must be one of {', '.join(EXAMPLE_MODES)}, got {mode!r}")
    n_top = max(1, round(MIX_TOP * len(top)))
    chosen = top[:n_top] + spread[: max(0, len(top) - n_top)]
    return sorted(chosen, key=lambda w: (-w.value, w.sample, w.start))


def held_out(examples: Examples, index: int) -> list[ex_mod.Window]:
    """The activating windows detection scoring tests, never shown to the labeller in any mode: the odd-rank top
    windows and the odd-rank range windows, alternately (as many as the top ones), so a label that fits only the
    peak scores lower."""
    top = examples.windows(index)[1::2]
    spread = examples.range_windows(index)[1::2]
    mixed = [w for pair in zip(top, spread) for w in pair] + top[len(spread):] + spread[len(top):]
    return mixed[: len(top)] if top else mixed


def labels_by_index(path: Path) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for line in store.read_jsonl(path):
        if isinstance(line.get("index"), int) and isinstance(line.get("label"), str):
            out[line["index"]] = line
    return out


def load_runtime(config: ServeConfig, top_k: int, console: Console | None):
    """The model for the examples pass: unfiltered, with a large top-k (see :mod:`.examples`)."""
    cfg = replace(config, top_k=top_k, feature_filter="none", calibration_path=None)
    try:
        if console is None:
            return calibrate.load(cfg)
        with console.status("loading the model and the SAE") as spinner:
            return calibrate.load(cfg, lambda msg: spinner.update(msg))
    except calibrate.CalibrateError as exc:
        raise GenerateError(str(exc)) from None


def collect(config: ServeConfig, opts: ExamplesOptions, *, top_k: int = ex_mod.DEFAULT_TOP_K,
            console: Console | None = None) -> tuple[ExamplesRun, Any, Any]:
    """Phase 1: (the examples run, its namespace, the tokenizer)."""
    rt = load_runtime(config, top_k, console)
    try:
        run = ex_mod.run(rt, opts, console=console)
    except ExamplesError as exc:
        raise GenerateError(str(exc)) from None
    finally:
        rt.backend.close()
    return run, ex_mod.namespace(rt), rt.info.tokenizer


def label(examples: Examples, ns: paths.Namespace, tokenizer: Any, provider: Provider, opts: LabelOptions,
          *, console: Console | None = None) -> LabelResult:
    """Phase 2 over ``examples``: label every feature that fired (of ``opts.features``) and is not labelled yet."""
    try:
        subset = store.parse_features(opts.features, examples.d_sae)
    except ValueError as exc:
        raise GenerateError(str(exc)) from None
    if opts.examples not in EXAMPLE_MODES:
        raise GenerateError(f"--examples must be one of {', '.join(EXAMPLE_MODES)}, got {opts.examples!r}")
    fired = examples.fired
    wanted = store.in_subset(range(examples.d_sae), subset)
    dead = [i for i in wanted if fired[i] == 0]
    labels_file = paths.autointerp_labels_file(opts.labeler, ns)
    result = LabelResult(labels_file, dead=dead)
    labels_file.parent.mkdir(parents=True, exist_ok=True)
    # every dead feature of the SAE in this examples run, whatever --features picked
    atomic.write_json(paths.autointerp_dead_file(opts.labeler, ns),
                      {"labeler": opts.labeler, "examples": examples.directory.name,
                       "samples": int(examples.meta["samples"]), "tokens": int(examples.meta["tokens"]),
                       "dead": [int(i) for i in (fired == 0).nonzero()[0]]})
    existing = labels_by_index(labels_file)
    todo = [i for i in wanted if fired[i] > 0 and i not in existing]
    result.already = sum(1 for i in wanted if fired[i] > 0 and i in existing)
    started = time.perf_counter()
    fh = store.open_append(labels_file)
    try:
        aio.run(_label_all(todo, examples, tokenizer, provider, opts, fh, result, console))
    finally:
        fh.close()
        result.elapsed_s = time.perf_counter() - started
        failed_file = paths.autointerp_failed_file(opts.labeler, ns)
        if result.failed:
            atomic.write_text(failed_file, "".join(json.dumps(f) + "\n" for f in result.failed))
        else:
            failed_file.unlink(missing_ok=True)
    if opts.output:
        result.output = Path(opts.output).expanduser()
        final = labels_by_index(labels_file)
        result.output.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(result.output, {str(i): final[i]["label"] for i in sorted(final)})
    return result


async def _label_all(todo: list[int], examples: Examples, tokenizer: Any, provider: Provider, opts: LabelOptions,
                     fh, result: LabelResult, console: Console | None) -> None:
    async with LLMClient(provider, opts.labeler, concurrency=opts.concurrency, timeout_s=opts.timeout_s,
                         max_retries=opts.max_retries) as client:

        async def work(index: int) -> bool:
            user = prompts.label_prompt(tokenizer, label_windows(examples, index, opts.examples))
            try:
                (text, description), answer = await client.ask(
                    prompts.LABEL_SYSTEM, user, prompts.LABEL_SCHEMA, prompts.LABEL_TOOL, prompts.check_label)
            except FatalLLMError:
                raise
            except LLMError as exc:
                result.failed.append({"index": index, "error": str(exc)})
                return False
            store.append(fh, {"index": index, "label": text, "description": description, "labeler": opts.labeler,
                              "prompt_sha256": prompts.prompt_sha256(prompts.LABEL_SYSTEM, user),
                              "input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens})
            result.labeled += 1
            return True

        try:
            await run_all(todo, work, client, f"labelling with {opts.labeler}", console)
        except FatalLLMError as exc:
            raise GenerateError(str(exc)) from None
        finally:
            result.input_tokens, result.output_tokens = client.input_tokens, client.output_tokens


def provider_for(backend: str) -> Provider:
    try:
        return resolve_provider(backend)
    except FatalLLMError as exc:
        raise GenerateError(str(exc)) from None
