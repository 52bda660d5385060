"""The examples pass on the tiny checkpoint: top-N windows against a brute-force computation over transformers'
residuals and the numpy encoder; an interrupted run resumes to the same arrays; ``example_window``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neuroscope.calibration.driver import read_samples
from neuroscope.config import ServeConfig
from neuroscope.core.sae import load_npz
from neuroscope.labels.autointerp import examples
from neuroscope.labels.autointerp.examples import AFTER, BEFORE, ExamplesOptions
from neuroscope.labels.autointerp.generate import load_runtime
from neuroscope.store import paths
from tests.support.calib import write_corpus
from tests.support.reference import reference_acts, residuals

SAMPLES, PER_FEATURE, MAX_TOKENS, POOL = 12, 3, 40, 5


@pytest.fixture(scope="module")
def runtime(tiny_fixture):
    config = ServeConfig(model=str(tiny_fixture.model_dir), sae_local_path=str(tiny_fixture.sae_path),
                         sae_layer=tiny_fixture.sae_layer, backend="torch-cpu")
    rt = load_runtime(config, 128, None)
    yield rt
    rt.backend.close()


def options(corpus: Path, **kw) -> ExamplesOptions:
    return ExamplesOptions(corpus_path=str(corpus), samples=SAMPLES, per_feature=PER_FEATURE, batch_size=4,
                           max_tokens_per_sample=MAX_TOKENS, pool=POOL, **kw)


def brute_force(fx, tokenizer, texts):
    """Per sample: ids and the (n, d_sae) activations with position 0 and specials zeroed."""
    sae = load_npz(fx.sae_path)
    special = set(tokenizer.all_special_ids)
    out = []
    for text in texts:
        ids = ([tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False))[:MAX_TOKENS]
        acts = reference_acts(sae, residuals(fx.model_dir, ids, fx.sae_layer))
        counted = np.array([j > 0 and t not in special for j, t in enumerate(ids)])
        out.append((ids, np.where(counted[:, None], acts, 0.0)))
    return out


def test_top_windows_equal_a_brute_force_computation(tiny_fixture, runtime, cache, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", SAMPLES)
    run = examples.run(runtime, options(corpus))
    ex = run.examples
    assert not run.up_to_date and ex.meta["truncated_positions"] == 0
    texts = [s.text for s in read_samples(str(corpus), SAMPLES, None)[1]]
    ref = brute_force(tiny_fixture, runtime.info.tokenizer, texts)
    d_sae = ref[0][1].shape[1]
    np.testing.assert_array_equal(ex.fired, sum((a > 0).sum(0) for _, a in ref))
    for f in range(d_sae):
        cands = [(float(a[:, f].max()), s, int(np.argmax(a[:, f])))
                 for s, (_, a) in enumerate(ref) if a[:, f].max() > 0]
        want = sorted(cands, key=lambda c: (-c[0], c[1]))[:PER_FEATURE]
        got = ex.windows(f)
        assert [(w.sample, w.start + w.peak) for w in got] == [(s, p) for _, s, p in want], f
        for w, (value, s, peak) in zip(got, want):
            ids, a = ref[s]
            start, end = max(1, peak - BEFORE), min(len(ids), peak + AFTER + 1)
            assert w.start == start and list(w.tokens) == ids[start:end]
            np.testing.assert_allclose(w.acts, a[start:end, f], rtol=1e-4, atol=1e-4)
            assert w.value == pytest.approx(value, rel=1e-4)
    pool = ex.pool()
    assert len(pool) == POOL
    for w in pool:
        ids, a = ref[w.sample]
        end = w.start + len(w.tokens)
        assert list(w.tokens) == ids[w.start:end]
        assert w.fired == {int(f) for f in np.flatnonzero(a[w.start:end].max(0) > 0)}

    again = examples.run(runtime, options(corpus))
    assert again.up_to_date and again.examples.directory == ex.directory


class Interrupting:
    """The real backend, failing on its n-th corpus pass (a crash in the middle of a run)."""

    def __init__(self, backend, n: int):
        self._backend, self._n, self.name = backend, n, backend.name

    def corpus_pass(self, batch, *, records=False):
        self._n -= 1
        if self._n == 0:
            raise KeyboardInterrupt
        return self._backend.corpus_pass(batch, records=records)


def test_an_interrupted_run_resumes_to_the_same_arrays(runtime, cache, tmp_path, monkeypatch):
    from dataclasses import replace

    corpus = write_corpus(tmp_path / "corpus", SAMPLES)
    reference = examples.run(runtime, options(corpus, checkpoint_every=4)).examples
    monkeypatch.setenv("NEUROSCOPE_CACHE", str(tmp_path / "other"))
    broken = replace(runtime, backend=Interrupting(runtime.backend, 3))
    with pytest.raises(KeyboardInterrupt):
        examples.run(broken, options(corpus, checkpoint_every=4))
    assert list((tmp_path / "other").rglob("state.npz")) and not list((tmp_path / "other").rglob("meta.json"))
    resumed = examples.run(runtime, options(corpus, checkpoint_every=4))
    assert resumed.resumed_from == 8
    assert set(resumed.examples.arrays) == set(reference.arrays)
    for k, v in reference.arrays.items():
        np.testing.assert_array_equal(resumed.examples.arrays[k], v, err_msg=k)
    assert not list((tmp_path / "other").rglob("state.npz"))


def test_example_window_marks_the_max_token(runtime, cache, tmp_path):
    ns = examples.namespace(runtime)
    tok = runtime.info.tokenizer
    assert examples.example_window(ns, 0, tok) is None  # no run yet
    ex = examples.run(runtime, options(write_corpus(tmp_path / "corpus", SAMPLES))).examples
    f = int(np.argmax(ex.fired))
    w = ex.windows(f)[0]
    text = examples.example_window(ns, f, tok)
    assert text.count("<<") == 1 and text.count(">>") == 1
    peak_text = tok.decode([int(w.tokens[w.peak])])
    assert f"<<{peak_text}>>" in text
    assert text.replace("<<", "").replace(">>", "") == tok.decode([int(t) for t in w.tokens]).replace("\n", "\\n")
    assert examples.example_window(ns, 10**6, tok) is None
    assert paths.examples_root() in ex.directory.parents


def test_range_windows_are_the_smallest_keys_of_where_each_feature_fired(tiny_fixture, runtime, cache, tmp_path):
    """Per feature: every (sample, position) where it fired gets the pass's hash key; per sample the smallest,
    then the ``per_feature`` smallest over the corpus, each with its window — checked against transformers + the
    numpy encoder."""
    from neuroscope.labels.autointerp.collector import _keys

    corpus = write_corpus(tmp_path / "corpus", SAMPLES)
    ex = examples.run(runtime, options(corpus)).examples
    texts = [s.text for s in read_samples(str(corpus), SAMPLES, None)[1]]
    ref = brute_force(tiny_fixture, runtime.info.tokenizer, texts)
    d_sae = ref[0][1].shape[1]
    some_below_top = 0
    for f in range(d_sae):
        cands = []
        for s, (_, a) in enumerate(ref):
            pos = np.flatnonzero(a[:, f] > 0)
            if pos.size:
                keys = _keys(s, pos, np.full(pos.size, f))
                j = int(np.argmin(keys))
                cands.append((int(keys[j]), s, int(pos[j]), float(a[pos[j], f])))
        kept = sorted(cands)[:PER_FEATURE]
        want = sorted(kept, key=lambda c: (-c[3], c[1]))
        got = ex.range_windows(f)
        assert [(w.sample, w.start + w.peak) for w in got] == [(s, p) for _, s, p, _ in want], f
        for w, (_, s, p, v) in zip(got, want):
            ids, a = ref[s]
            start, end = max(1, p - BEFORE), min(len(ids), p + AFTER + 1)
            assert w.start == start and list(w.tokens) == ids[start:end]
            np.testing.assert_allclose(w.acts, a[start:end, f], rtol=1e-4, atol=1e-4)
            assert w.value == pytest.approx(v, rel=1e-4)
        tops = {(w.sample, w.start + w.peak) for w in ex.windows(f)}
        some_below_top += any((w.sample, w.start + w.peak) not in tops for w in got)
    assert some_below_top > 0  # the range sample is not the top windows again
    # the density histogram: every counted nonzero activation, in log bins
    from neuroscope.labels.autointerp.collector import HIST_EDGES

    every = np.concatenate([a for _, a in ref])
    for f in range(d_sae):
        v = every[:, f][every[:, f] > 0]
        want, _ = np.histogram(np.clip(v, HIST_EDGES[0], np.nextafter(HIST_EDGES[-1], 0)), bins=HIST_EDGES)
        np.testing.assert_array_equal(ex.arrays["hist"][f], want, err_msg=str(f))
        d = ex.density(f)
        if want.any():
            nz = np.flatnonzero(want)
            assert list(d[1]) == list(want[nz[0]:nz[-1] + 1]) and len(d[0]) == len(d[1]) + 1
        else:
            assert d is None


def test_quantiles_label_mix_and_held_out(runtime, cache, tmp_path):
    from neuroscope.labels.autointerp.generate import held_out, label_windows

    opts = ExamplesOptions(corpus_path=str(write_corpus(tmp_path / "corpus", SAMPLES)), samples=SAMPLES,
                           per_feature=10, batch_size=4, max_tokens_per_sample=MAX_TOKENS, pool=POOL)
    ex = examples.run(runtime, opts).examples
    f = int(np.argmax(ex.fired))
    spread = ex.range_windows(f)
    assert len(spread) == 10
    assert [q for q, _ in examples.quantile_windows(spread)] == [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    key = lambda w: (w.sample, w.start)  # noqa: E731
    top, rng = ex.windows(f), spread
    assert [key(w) for w in label_windows(ex, f, "top")] == [key(w) for w in top[0::2]]
    assert [key(w) for w in label_windows(ex, f, "quantiles")] == [key(w) for w in rng[0::2]]
    mix = label_windows(ex, f, "mix")
    assert len(mix) == 5 and {key(w) for w in mix} == {key(w) for w in top[0:1]} | {key(w) for w in rng[0:8:2]}
    assert [w.value for w in mix] == sorted((w.value for w in mix), reverse=True)
    held = held_out(ex, f)
    assert [key(w) for w in held] == [key(w) for w in (top[1], rng[1], top[3], rng[3], top[5])]
    for mode in ("top", "quantiles", "mix"):  # never scored on what the labeller saw
        shown = {(w.sample, w.start, w.value) for w in label_windows(ex, f, mode)}
        assert not shown & {(w.sample, w.start, w.value) for w in held}, mode
