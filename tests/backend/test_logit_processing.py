"""logit_bias, presence / frequency penalties and logprobs on every backend, against transformers' logits.

The rule is OpenAI's: ``logits[id] += bias``, then ``logits -= frequency * count + presence * (count > 0)`` with
``count`` how often each token was generated so far; greedy takes the argmax of that, and the logprobs are its
log_softmax (before temperature). The reference applies the rule in numpy to transformers' logits of the whole
sequence (one uncached forward), so every step is checked: the chosen token is the reference argmax, its logprob
and the top-n equal the reference's within 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

from neuroscope.core import registry
from neuroscope.core.decode import generate
from neuroscope.core.protocol import GenerationParams, ModelSpec
from neuroscope.core.sae import load_npz
from tests.support.sampling import next_token_logits

BACKENDS = registry.available()
N = 12
TOL = 1e-4


@pytest.fixture(scope="module", params=BACKENDS or [pytest.param(None, marks=pytest.mark.skip("no backend"))])
def loaded(request, tiny_fixture):
    backend = registry.resolve(request.param)()
    info = backend.load(ModelSpec(str(tiny_fixture.model_dir), dtype="float32"), load_npz(tiny_fixture.sae_path),
                        tiny_fixture.sae_layer, top_k=8)
    yield request.param, backend, info
    backend.close()


@pytest.fixture(scope="module")
def prompt_ids(loaded):
    return loaded[2].tokenizer.encode("The river bends around the old mill where the village keeps its grain.")


def _run(backend, prompt_ids, **kw):
    steps = list(generate(backend, prompt_ids, GenerationParams(max_tokens=N, temperature=0.0, **kw)))
    assert len(steps) == N
    return steps


def _processed(raw: np.ndarray, generated: list[int], bias=(), presence=0.0, frequency=0.0) -> np.ndarray:
    """Row i: the reference logits that chose generated[i], processed by the rule."""
    out = raw.copy()
    for i in range(len(generated)):
        for tid, b in bias:
            out[i, tid] += b
        count = np.bincount(np.array(generated[:i], dtype=np.int64), minlength=raw.shape[1]).astype(np.float64)
        out[i] -= frequency * count + presence * (count > 0)
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _check(steps, prompt_ids, model_dir, n_top=None, **rule):
    tokens = [s.token_id for s in steps]
    proc = _processed(next_token_logits(model_dir, prompt_ids, tokens), tokens, **rule)
    lp = _log_softmax(proc)
    for i, (s, row) in enumerate(zip(steps, lp)):
        assert row[s.token_id] >= row.max() - TOL, f"step {i}: {s.token_id} is not the reference argmax {row.argmax()}"
        if n_top is None:
            continue
        assert s.logprob == pytest.approx(row[s.token_id], abs=TOL), i
        assert len(s.top_logprobs) == n_top
        ids = [t for t, _ in s.top_logprobs]
        vals = np.array([v for _, v in s.top_logprobs])
        np.testing.assert_allclose(vals, row[ids], atol=TOL)
        np.testing.assert_allclose(vals, np.sort(row)[::-1][:n_top], atol=TOL)  # the true top-n, best first
    return tokens


def test_logit_bias_forces_and_bans(loaded, prompt_ids):
    _, backend, info = loaded
    greedy = [s.token_id for s in _run(backend, prompt_ids)]
    forced = 1234 % info.vocab_size
    assert [s.token_id for s in _run(backend, prompt_ids, logit_bias=((forced, 100.0),))] == [forced] * N
    banned = [s.token_id for s in _run(backend, prompt_ids, logit_bias=((greedy[0], -100.0),))]
    assert greedy[0] not in banned


def test_bias_matches_the_reference(loaded, prompt_ids, tiny_fixture):
    _, backend, _ = loaded
    bias = ((5, 3.0), (17, -2.5), (99, 1.5))
    steps = _run(backend, prompt_ids, logit_bias=bias, logprobs=3)
    _check(steps, prompt_ids, tiny_fixture.model_dir, n_top=3, bias=bias)


@pytest.mark.parametrize("presence,frequency", [(0.0, 2.0), (1.5, 0.0), (-0.5, 1.0)])
def test_penalties_match_the_reference(loaded, prompt_ids, tiny_fixture, presence, frequency):
    _, backend, _ = loaded
    plain = [s.token_id for s in _run(backend, prompt_ids)]
    steps = _run(backend, prompt_ids, presence_penalty=presence, frequency_penalty=frequency, logprobs=5)
    tokens = _check(steps, prompt_ids, tiny_fixture.model_dir, n_top=5, presence=presence, frequency=frequency)
    if frequency >= 2.0:
        assert tokens != plain, "a strong frequency penalty must change the greedy output"


def test_logprobs_of_plain_greedy(loaded, prompt_ids, tiny_fixture):
    _, backend, _ = loaded
    plain = _run(backend, prompt_ids)
    assert all(s.logprob is None and s.top_logprobs is None for s in plain)
    with_lp = _run(backend, prompt_ids, logprobs=0)
    assert [s.token_id for s in with_lp] == [s.token_id for s in plain]
    assert all(s.top_logprobs == () for s in with_lp)
    # the features are untouched by the logprob tail
    for a, b in zip(plain, with_lp):
        np.testing.assert_array_equal(a.feature_ids, b.feature_ids)
    _check(_run(backend, prompt_ids, logprobs=20), prompt_ids, tiny_fixture.model_dir, n_top=20)


def test_sampled_logprobs_are_before_temperature(loaded, prompt_ids, tiny_fixture):
    _, backend, _ = loaded
    steps = list(generate(backend, prompt_ids, GenerationParams(max_tokens=6, temperature=1.5, seed=3, logprobs=2)))
    tokens = [s.token_id for s in steps]
    lp = _log_softmax(next_token_logits(tiny_fixture.model_dir, prompt_ids, tokens))
    for s, row in zip(steps, lp):
        assert s.logprob == pytest.approx(row[s.token_id], abs=TOL)


_SEEN: dict = {}


@pytest.mark.parametrize("case", ["bias", "penalties"])
def test_backends_agree(loaded, prompt_ids, case):
    name, backend, _ = loaded
    kw = {"bias": dict(logit_bias=((5, 3.0), (17, -2.5))),
          "penalties": dict(presence_penalty=0.7, frequency_penalty=1.3)}[case]
    steps = _run(backend, prompt_ids, logprobs=4, **kw)
    got = ([s.token_id for s in steps], np.array([s.logprob for s in steps]))
    for other, (toks, lps) in _SEEN.get(case, {}).items():
        assert toks == got[0], (name, other)
        np.testing.assert_allclose(got[1], lps, atol=TOL)
    _SEEN.setdefault(case, {})[name] = got
