"""Detection scoring (EleutherAI's delphi): can an LLM tell, from a label alone, where the feature fires?

For each labelled feature the scorer sees the label and ``2n`` numbered windows, shuffled: ``n`` activating ones
(the feature's held-out windows, never shown to the labeler: top windows of odd rank alternating with
activation-range windows of odd rank) and ``n`` random windows of
the corpus where the feature never fired (from the examples run's pool). It answers one 0/1 per window; the
score is the balanced accuracy ``(TP / (TP + FN) + TN / (TN + FP)) / 2`` (0.5: chance, 1: perfect). The choice
and the order of windows depend only on the feature index, so a re-run asks the same question.

One line per feature goes to :func:`neuroscope.store.paths.autointerp_scores_file`::

    {"index", "label", "score", "scorer", "labeler", "n_activating", "n_non_activating", "predictions",
     "truth", "input_tokens", "output_tokens"}

A re-run skips the features this scorer already scored with the same label.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from neuroscope.labels import aio
from neuroscope.labels.autointerp import prompts, store
from neuroscope.labels.autointerp.examples import Examples, render
from neuroscope.labels.autointerp.generate import GenerateError, held_out
from neuroscope.labels.autointerp.jobs import run_all
from neuroscope.labels.autointerp.llm import FatalLLMError, LLMClient, LLMError, Provider
from neuroscope.store import paths

DEFAULT_THRESHOLD = 0.75
SEED = "neuroscope-detection/1"


def balanced_accuracy(predictions: list[int], truth: list[bool]) -> float:
    """Mean of the recall on activating and on non-activating windows (both kinds must be present)."""
    tp = sum(1 for p, t in zip(predictions, truth) if t and p)
    fn = sum(1 for p, t in zip(predictions, truth) if t and not p)
    tn = sum(1 for p, t in zip(predictions, truth) if not t and not p)
    fp = sum(1 for p, t in zip(predictions, truth) if not t and p)
    if tp + fn == 0 or tn + fp == 0:
        raise ValueError("balanced accuracy needs activating and non-activating windows")
    return 0.5 * (tp / (tp + fn) + tn / (tn + fp))


@dataclass(frozen=True)
class Trial:
    texts: list[str]
    truth: list[bool]  # True: an activating window

    @property
    def n_activating(self) -> int:
        return sum(self.truth)


def trial(examples: Examples, index: int, tokenizer: Any, pool: list | None = None) -> Trial | None:
    """The shuffled, balanced windows shown for feature ``index`` (None: too few of one kind)."""
    active = held_out(examples, index)
    pool = examples.pool() if pool is None else pool
    quiet = [w for w in pool if index not in w.fired]
    n = min(len(active), len(quiet))
    if n == 0:
        return None
    rng = random.Random(f"{SEED}:{index}")
    items = [(render(tokenizer, w.tokens), True) for w in active[:n]]
    items += [(render(tokenizer, w.tokens), False) for w in rng.sample(quiet, n)]
    rng.shuffle(items)
    return Trial([t for t, _ in items], [a for _, a in items])


@dataclass
class ScoreOptions:
    labeler: str
    scorer: str
    concurrency: int = 50
    features: str | None = None
    threshold: float = DEFAULT_THRESHOLD
    timeout_s: float = 120.0
    max_retries: int = 6


@dataclass
class ScoreResult:
    scores_file: Path
    scores: dict[int, float] = field(default_factory=dict)  # every score of this scorer for these labels
    scored: int = 0  # in this run
    already: int = 0
    unscorable: list[int] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    elapsed_s: float = 0.0

    def summary(self, threshold: float) -> dict[str, float] | None:
        if not self.scores:
            return None
        s = np.array(list(self.scores.values()), dtype=np.float64)
        q1, median, q3 = np.percentile(s, [25, 50, 75])
        return {"n": int(s.size), "mean": float(s.mean()), "q1": float(q1), "median": float(median),
                "q3": float(q3), "min": float(s.min()), "max": float(s.max()),
                "above": float((s >= threshold).mean())}


def read_labels(path: Path) -> dict[int, dict[str, Any]]:
    """Labels from a labels JSONL file, or from a plain ``{"index": "label"}`` JSON (as ``--output`` writes)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GenerateError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GenerateError(f"cannot read labels file {path}: {exc}") from None
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, dict) and "index" not in whole:
        out = {}
        for k, v in whole.items():
            try:
                out[int(k)] = {"index": int(k), "label": str(v), "description": ""}
            except ValueError:
                raise GenerateError(f"labels file {path}: key {k!r} is not a feature index") from None
        return out
    out = {}
    for line in store.read_jsonl(path):
        if isinstance(line.get("index"), int) and isinstance(line.get("label"), str):
            out[line["index"]] = line
    return out


def score(examples: Examples, ns: paths.Namespace, tokenizer: Any, labels: dict[int, dict[str, Any]],
          provider: Provider, opts: ScoreOptions, *, console: Console | None = None) -> ScoreResult:
    try:
        subset = store.parse_features(opts.features, examples.d_sae)
    except ValueError as exc:
        raise GenerateError(str(exc)) from None
    bad = [i for i in labels if not 0 <= i < examples.d_sae]
    if bad:
        raise GenerateError(f"the labels name feature {min(bad)}, out of range for an SAE with {examples.d_sae} "
                            "features")
    scores_file = paths.autointerp_scores_file(opts.labeler, ns)
    result = ScoreResult(scores_file)
    wanted = store.in_subset(labels, subset)
    done = {}
    for line in store.read_jsonl(scores_file):
        i = line.get("index")
        if line.get("scorer") == opts.scorer and i in labels and line.get("label") == labels[i]["label"]:
            done[i] = float(line["score"])
    pool = examples.pool()
    trials: dict[int, Trial] = {}
    for i in wanted:
        if i in done:
            result.scores[i] = done[i]
            result.already += 1
            continue
        t = trial(examples, i, tokenizer, pool)
        if t is None:
            result.unscorable.append(i)
        else:
            trials[i] = t
    started = time.perf_counter()
    fh = store.open_append(scores_file)
    try:
        aio.run(_score_all(trials, labels, provider, opts, fh, result, console))
    finally:
        fh.close()
        result.elapsed_s = time.perf_counter() - started
    return result


async def _score_all(trials: dict[int, Trial], labels: dict[int, dict[str, Any]], provider: Provider,
                     opts: ScoreOptions, fh, result: ScoreResult, console: Console | None) -> None:
    async with LLMClient(provider, opts.scorer, concurrency=opts.concurrency, timeout_s=opts.timeout_s,
                         max_retries=opts.max_retries) as client:

        async def work(index: int) -> bool:
            t, lab = trials[index], labels[index]
            user = prompts.detect_prompt(lab["label"], lab.get("description") or "", t.texts)
            try:
                predictions, answer = await client.ask(prompts.DETECT_SYSTEM, user, prompts.detect_schema(),
                                                       prompts.DETECT_TOOL, prompts.check_detection(len(t.texts)))
            except FatalLLMError:
                raise
            except LLMError as exc:
                result.failed.append({"index": index, "error": str(exc)})
                return False
            value = balanced_accuracy(predictions, t.truth)
            store.append(fh, {"index": index, "label": lab["label"], "score": value, "scorer": opts.scorer,
                              "labeler": opts.labeler, "n_activating": t.n_activating,
                              "n_non_activating": len(t.truth) - t.n_activating, "predictions": predictions,
                              "truth": [int(x) for x in t.truth], "input_tokens": answer.input_tokens,
                              "output_tokens": answer.output_tokens})
            result.scores[index] = value
            result.scored += 1
            return True

        try:
            await run_all(sorted(trials), work, client, f"scoring with {opts.scorer}", console)
        except FatalLLMError as exc:
            raise GenerateError(str(exc)) from None
        finally:
            result.input_tokens, result.output_tokens = client.input_tokens, client.output_tokens
