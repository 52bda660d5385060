"""The one checkpointed loop around the corpus pass, shared by ``calibrate run`` and the labelling examples pass.

A run reads the first ``samples`` texts of the corpus in corpus order, tokenizes each as ``[BOS] + text`` (cut to
``max_tokens`` ids) and batches them by index: batch j always holds samples ``j * batch_size ..
(j + 1) * batch_size - 1``. So a run resumed from a checkpoint after ``s`` samples sees exactly the batches an
uninterrupted one does, and folds them in the same order (bit-identical results).

What a pass *keeps* is its accumulator's business (:class:`Accumulator`): calibration adds up per-feature
statistics, the examples pass keeps per-feature top windows. The driver owns the rest, once: where to resume,
the batches, the backend call, rich progress with ETA, and when to checkpoint (``save``: an atomic write of the
accumulator's state, every ``checkpoint_every`` samples and never after the last batch — a finished run writes
its result instead).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from neuroscope.calibration import corpus, corpus_pass
from neuroscope.core.protocol import Backend, CorpusBatch, CorpusResult
from neuroscope.progress import JobProgress

# the pass's knobs, one set for both passes: the same batches, sample length and checkpoint interval
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_TOKENS = 256
CHECKPOINT_EVERY = 50


class CorpusPassError(RuntimeError):
    """The corpus cannot be read or holds no text; the message is one user-facing line."""


class Accumulator(Protocol):
    """What a pass folds its batches into."""

    records: bool  # whether the pass needs every position's top-k record (else the batch statistics suffice)

    @property
    def samples_done(self) -> int:
        """Samples folded in so far (where a resumed run starts)."""

    def add_batch(self, start: int, ids: list[list[int]], batch: CorpusBatch, result: CorpusResult) -> None:
        """Fold in the batch of samples ``start ..``: their token ids, the padded batch and the backend's result."""


@dataclass(frozen=True)
class PassSettings:
    batch_size: int = DEFAULT_BATCH_SIZE
    max_tokens: int = DEFAULT_MAX_TOKENS  # per sample, BOS included
    checkpoint_every: int = CHECKPOINT_EVERY  # samples


def sha(obj: Any) -> str:
    """The sha256 of ``obj`` as canonical JSON (run keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def corpus_key(samples: Sequence[corpus.Sample]) -> str:
    """What a run read, for its key: every sample's name and the hash of its text, in order."""
    return sha([[s.name, hashlib.sha256(s.text.encode("utf-8")).hexdigest()] for s in samples])


def read_samples(corpus_path: str | None, n: int, console: Console | None) -> tuple[Path, list[corpus.Sample]]:
    """The corpus (built first when there is none and no path was given) and its first ``n`` samples."""
    try:
        root = corpus.ensure_corpus(corpus_path, samples_wanted=n, console=console)
        chosen: list[corpus.Sample] = []
        for sample in corpus.iter_corpus(root):
            chosen.append(sample)
            if len(chosen) == n:
                break
    except (corpus.CorpusError, OSError) as exc:
        raise CorpusPassError(str(exc)) from None
    if not chosen:
        raise CorpusPassError(f"the corpus in {root} holds no text")
    return root, chosen


def drive(backend: Backend, tokenizer: Any, samples: Sequence[corpus.Sample], acc: Accumulator,
          settings: PassSettings, save: Callable[[], None], *, label: str, console: Console | None) -> int:
    """Run the pass from ``acc.samples_done`` to the end, calling ``save()`` at each checkpoint; returns the
    positions that went through the model in this run (pads excluded)."""
    skip, pad = corpus_pass.special_ids(tokenizer), corpus_pass.pad_id(tokenizer)
    bs, every = settings.batch_size, settings.checkpoint_every
    processed = 0
    with JobProgress(console) as progress:
        bar = progress.items(label, len(samples), completed=acc.samples_done)
        for start in range(acc.samples_done, len(samples), bs):
            ids = [corpus_pass.tokenize(tokenizer, s.text, settings.max_tokens) for s in samples[start:start + bs]]
            batch = corpus_pass.make_batch(ids, skip, pad)
            result = backend.corpus_pass(batch, records=acc.records)
            before = acc.samples_done
            acc.add_batch(start, ids, batch, result)
            processed += sum(len(x) for x in ids)
            bar.advance(len(ids), tokens=processed)
            if acc.samples_done // every > before // every and acc.samples_done < len(samples):
                save()
    return processed
