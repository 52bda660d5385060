"""The corpus-pass driver that ``calibrate run`` and the examples pass share.

Its loop on a fake backend (batches by index, resume, checkpoint cadence, the records flag), then both passes on
the tiny checkpoint against the plain loop each ran before the driver existed: the same files, byte for byte.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from neuroscope.calibration import corpus_pass, stats
from neuroscope.calibration import run as calibrate
from neuroscope.calibration.corpus import Sample
from neuroscope.calibration.driver import CorpusPassError, PassSettings, drive, read_samples
from neuroscope.calibration.stats import Accumulator
from neuroscope.config import ServeConfig
from neuroscope.core.protocol import CorpusResult
from neuroscope.labels.autointerp import examples
from neuroscope.labels.autointerp.collector import Collector, npz_bytes
from neuroscope.labels.autointerp.generate import load_runtime
from neuroscope.store import atomic
from tests.support.calib import write_corpus

SAMPLES, BATCH, MAX_TOKENS = 11, 3, 30


class Tokenizer:
    bos_token_id, eos_token_id, pad_token_id, all_special_ids = 1, 2, 0, [0, 1, 2]

    def encode(self, text, add_special_tokens=False):
        return [3 + len(word) for word in text.split()]


class Backend:
    def __init__(self):
        self.calls = []

    def corpus_pass(self, batch, records=False):
        self.calls.append((batch.tokens.shape[0], records))
        return CorpusResult(stats=None, records=None)


class Fold:
    """Records what the driver hands over."""

    def __init__(self, records: bool, done: int = 0):
        self.records, self.done, self.batches = records, done, []

    @property
    def samples_done(self) -> int:
        return self.done

    def add_batch(self, start, ids, batch, result):
        self.batches.append((start, ids))
        self.done += len(ids)


def samples(n: int) -> list[Sample]:
    return [Sample(f"{i:04d}.txt", " ".join("w" * (1 + j % 4) for j in range(i + 2))) for i in range(n)]


def test_batches_are_cut_by_index_and_checkpoints_follow_the_interval():
    backend, fold, saved = Backend(), Fold(records=True), []
    texts = samples(10)
    processed = drive(backend, Tokenizer(), texts, fold, PassSettings(batch_size=4, max_tokens=5, checkpoint_every=3),
                      lambda: saved.append(fold.done), label="test", console=None)
    assert [start for start, _ in fold.batches] == [0, 4, 8]
    assert [len(ids) for _, ids in fold.batches] == [4, 4, 2]
    assert fold.batches[0][1][0] == [1, 4, 5]  # [BOS] + one id per word ("w ww")
    assert all(len(ids) <= 5 and ids[0] == 1 for _, b in fold.batches for ids in b)
    assert saved == [4, 8]  # each time a multiple of 3 is passed, never after the last batch
    assert backend.calls == [(4, True), (4, True), (2, True)]
    assert processed == sum(len(ids) for _, b in fold.batches for ids in b)


def test_a_resumed_pass_starts_where_its_accumulator_stopped():
    backend, fold = Backend(), Fold(records=False, done=4)
    drive(backend, Tokenizer(), samples(10), fold, PassSettings(batch_size=4, max_tokens=8, checkpoint_every=50),
          lambda: None, label="test", console=None)
    assert [start for start, _ in fold.batches] == [4, 8]
    assert backend.calls == [(4, False), (2, False)]


def test_an_empty_or_missing_corpus_is_one_line(tmp_path):
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("  \n")
    (tmp_path / "none").mkdir()
    for where, says in (("blank", "holds no text"), ("none", "no .txt files"), ("nowhere", "nowhere")):
        with pytest.raises(CorpusPassError, match=says) as info:
            read_samples(str(tmp_path / where), 5, None)
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ both passes, as before the driver
@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), SAMPLES)


def config(fx) -> ServeConfig:
    return ServeConfig(model=str(fx.model_dir), sae_local_path=str(fx.sae_path), sae_layer=fx.sae_layer,
                       backend="torch-cpu")


def plain_batches(rt, texts):
    """The loop both passes ran on their own: samples by index, ``[BOS] + text``, padded batches."""
    tok = rt.info.tokenizer
    skip, pad = corpus_pass.special_ids(tok), corpus_pass.pad_id(tok)
    for start in range(0, len(texts), BATCH):
        ids = [corpus_pass.tokenize(tok, s.text, MAX_TOKENS) for s in texts[start:start + BATCH]]
        yield start, ids, corpus_pass.make_batch(ids, skip, pad)


def test_the_calibration_file_is_the_plain_loops_byte_for_byte(tiny_fixture, corpus_dir, cache, tmp_path,
                                                                 monkeypatch):
    frozen = time.gmtime(1_700_000_000)
    monkeypatch.setattr(time, "gmtime", lambda *a: frozen)
    opts = calibrate.RunOptions(corpus_path=str(corpus_dir), samples=SAMPLES, batch_size=BATCH,
                                max_tokens_per_sample=MAX_TOKENS, output=str(tmp_path / "calibration.json"),
                                checkpoint_every=4)
    rt = calibrate.load(config(tiny_fixture))
    try:
        result = calibrate.run(rt.config, opts, runtime=rt)
        _, texts = read_samples(str(corpus_dir), SAMPLES, None)
        acc = Accumulator(rt.sae.d_sae)
        for _, ids, batch in plain_batches(rt, texts):
            acc.add(rt.backend.corpus_pass(batch, records=False).stats, samples=len(ids))
        c = rt.config
        ns = stats.namespace_for(c.model, c.sae, c.sae_path, c.sae_local_path, c.sae_layer, c.sae_input_norm)
        expected = acc.to_json(stats.identity(ns, rt.sae.d_sae))
    finally:
        rt.backend.close()
    plain = tmp_path / "plain.json"
    atomic.write_json(plain, expected)
    assert result.output.read_bytes() == plain.read_bytes()
    assert json.loads(plain.read_text())["samples"] == SAMPLES


def test_the_examples_arrays_are_the_plain_loops_byte_for_byte(tiny_fixture, corpus_dir, cache):
    rt = load_runtime(config(tiny_fixture), 128, None)
    try:
        opts = examples.ExamplesOptions(corpus_path=str(corpus_dir), samples=SAMPLES, per_feature=3, batch_size=BATCH,
                                        max_tokens_per_sample=MAX_TOKENS, pool=5, checkpoint_every=4)
        run = examples.run(rt, opts)
        _, texts = read_samples(str(corpus_dir), SAMPLES, None)
        col = Collector(rt.sae.d_sae, 3, 5, min(rt.config.top_k, rt.sae.d_sae))
        for start, ids, batch in plain_batches(rt, texts):
            records = rt.backend.corpus_pass(batch, records=True).records
            for b, (sample_ids, rec) in enumerate(zip(ids, records)):
                col.add(start + b, sample_ids, np.asarray(rec), batch.counted[b, : len(sample_ids)])
    finally:
        rt.backend.close()
    assert (run.examples.directory / examples.DATA).read_bytes() == npz_bytes(col.arrays())
    assert int(run.examples.fired.sum()) > 0
