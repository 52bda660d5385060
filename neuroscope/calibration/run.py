"""``neuroscope calibrate run``: the corpus pass over a text corpus, accumulated into one calibration file.

The pass is :mod:`neuroscope.calibration.driver`'s: samples in corpus order, ``[BOS] + text`` (truncated to
``max_tokens_per_sample``), batched by index, so a resumed run sees exactly the batches an uninterrupted one does
and adds them up in the same order (bit-identical sums); :class:`~neuroscope.calibration.stats.Accumulator` is
the fold. Every ``checkpoint_every`` samples the accumulated state is written atomically under
``<cache>/checkpoints/calibration/<namespace>/<run key>/`` (the run key hashes every option that changes the
result); a killed run started again resumes from there. A finished run leaves ``done.json`` beside its state, so
running it again with the same options says it is up to date (``force`` starts over).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Console

from neuroscope.calibration import stats
from neuroscope.calibration.driver import (CHECKPOINT_EVERY, DEFAULT_BATCH_SIZE, DEFAULT_MAX_TOKENS, CorpusPassError,
                                           PassSettings, corpus_key, drive, read_samples, sha)
from neuroscope.calibration.stats import Accumulator, CalibrationError
from neuroscope.config import ServeConfig
from neuroscope.runtime import Runtime, StartupError, load_runtime
from neuroscope.store import atomic, paths

if TYPE_CHECKING:
    from neuroscope.calibration.corpus import Sample
    from neuroscope.labels.table import Labels

STATE = "state.json"
DONE = "done.json"
STATE_FORMAT = "neuroscope-calibration-checkpoint/1"
DEFAULT_SAMPLES = 1000


class CalibrateError(RuntimeError):
    """Calibration cannot run; the message is one user-facing line."""


@dataclass
class RunOptions:
    corpus_path: str | None = None
    samples: int = DEFAULT_SAMPLES
    batch_size: int = DEFAULT_BATCH_SIZE
    max_tokens_per_sample: int = DEFAULT_MAX_TOKENS
    output: str | None = None
    force: bool = False
    checkpoint_every: int = CHECKPOINT_EVERY

    def validate(self) -> None:
        if self.samples < 1:
            raise ValueError(f"--samples must be at least 1, got {self.samples}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_tokens_per_sample < 2:
            raise ValueError(f"--max-tokens-per-sample must be at least 2 (BOS and one token), "
                             f"got {self.max_tokens_per_sample}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint interval must be at least 1 sample, got {self.checkpoint_every}")


@dataclass
class RunResult:
    output: Path
    data: dict[str, Any]  # the calibration file's content
    up_to_date: bool
    resumed_from: int  # samples already done when this run started (0: from scratch)
    samples_in_corpus: int
    labels: Labels
    checkpoint_dir: Path
    elapsed_s: float = 0.0
    tokens_processed: int = 0  # positions through the model in this run (BOS and pads excluded from stats only)


def load(config: ServeConfig, status: Callable[[str], None] = lambda _: None) -> Runtime:
    """The backend, model, SAE and tokenizer, loaded as ``serve`` loads them (never the demo as a fallback)."""
    try:
        return load_runtime(replace(config, demo_fallback=False), status)
    except StartupError as exc:
        raise CalibrateError(str(exc)) from None


def run(config: ServeConfig, opts: RunOptions, *, console: Console | None = None,
        runtime: Runtime | None = None) -> RunResult:
    """Calibrate the configuration's model + SAE over the corpus (see the module docstring)."""
    try:
        opts.validate()
        config.validate()
    except ValueError as exc:
        raise CalibrateError(str(exc)) from None
    try:
        root, samples = read_samples(opts.corpus_path, opts.samples, console)
    except CorpusPassError as exc:
        raise CalibrateError(str(exc)) from None
    if runtime is not None:
        rt = runtime
    elif console is not None:
        with console.status("loading the model and the SAE") as spinner:
            rt = load(config, lambda msg: spinner.update(msg))
    else:
        rt = load(config)
    try:
        return _run(rt, opts, root, samples, console)
    finally:
        if runtime is None:
            rt.backend.close()


def _run(rt: Runtime, opts: RunOptions, root: Path, samples: list[Sample],
         console: Console | None) -> RunResult:
    cfg, info, d_sae = rt.config, rt.info, rt.sae.d_sae
    ns = stats.namespace_for(cfg.model, cfg.sae, cfg.sae_path, cfg.sae_local_path, cfg.sae_layer,
                             cfg.sae_input_norm, demo=rt.demo)
    ident = stats.identity(ns, d_sae)
    output = Path(opts.output).expanduser() if opts.output else paths.calibration_file(ns)
    # every option that changes the statistics: the texts read, how they are cut and batched, the numerics
    run_key = sha({
        "format": STATE_FORMAT, "identity": ident, "corpus": corpus_key(samples),
        "samples": len(samples), "batch_size": opts.batch_size, "max_tokens": opts.max_tokens_per_sample,
        "backend": rt.backend.name, "dtype": info.dtype,
    })
    ckdir = paths.checkpoint_dir("calibration", ns, run_key[:16])
    result = RunResult(output, {}, False, 0, len(samples), rt.labels, ckdir)

    if opts.force and ckdir.exists():
        shutil.rmtree(ckdir)
    done = _read_json(ckdir / DONE)
    if done is not None and done.get("key") == run_key and output.is_file() and \
            done.get("sha256") == paths.file_sha256(output) and done.get("output") == str(output.resolve()):
        result.data = json.loads(output.read_text(encoding="utf-8"))
        result.up_to_date = True
        return result

    acc = Accumulator(d_sae)
    state = _read_json(ckdir / STATE)
    if state is not None and state.get("format") == STATE_FORMAT and state.get("key") == run_key:
        acc = Accumulator.from_state(state["accumulator"])
        result.resumed_from = acc.samples
    ckdir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_tmp(ckdir)

    def save() -> None:
        atomic.write_json(ckdir / STATE, {"format": STATE_FORMAT, "key": run_key, "accumulator": acc.state()})

    started = time.perf_counter()
    settings = PassSettings(opts.batch_size, opts.max_tokens_per_sample, opts.checkpoint_every)
    processed = drive(rt.backend, info.tokenizer, samples, acc, settings, save, label="calibrating", console=console)
    if acc.tokens < 1:
        raise CalibrateError(f"no token of the {len(samples)} samples counted (each sample needs a token after BOS)")
    data = acc.to_json(ident)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(output, data)
    atomic.write_json(ckdir / DONE, {"key": run_key, "output": str(output.resolve()),
                                     "sha256": paths.file_sha256(output), "corpus": str(root)})
    (ckdir / STATE).unlink(missing_ok=True)
    result.data, result.elapsed_s, result.tokens_processed = data, time.perf_counter() - started, processed
    return result


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def densest(data: dict[str, Any], n: int) -> list[int]:
    rate = data["features"]["firing_rate"]
    return sorted(range(len(rate)), key=lambda i: (-rate[i], i))[:n]


def rarest(data: dict[str, Any], n: int) -> list[int]:
    """The least frequent features that fired at least once (dead ones are counted in the summary)."""
    rate = data["features"]["firing_rate"]
    return sorted((i for i in range(len(rate)) if rate[i] > 0), key=lambda i: (rate[i], i))[:n]


def load_file(path: str | Path) -> stats.Calibration:
    try:
        return stats.load(path)
    except CalibrationError as exc:
        raise CalibrateError(str(exc)) from None
