"""The corpus pass (prefill only, batched, statistics reduced on the device) on every backend here.

Its per-position features equal the serving path's prompt features; its statistics equal a numpy reference
computed from transformers' own residuals with BOS, special tokens, pads and position 0 left out; batching
changes nothing; MLX and torch agree.
"""

from __future__ import annotations

import numpy as np
import pytest

from neuroscope.calibration import corpus_pass
from neuroscope.calibration.stats import Accumulator
from neuroscope.core import registry
from neuroscope.core.decode import generate
from neuroscope.core.protocol import GenerationParams
from neuroscope.core.records import features
from tests.support.reference import load_backend, reference_acts, residuals

BACKENDS = registry.available()
K = 8
TEXTS = [
    "The river bends around the old mill where the village keeps its grain. In spring the water rises and the "
    "children watch the wheel turn faster.",  # longer than the sliding window (16)
    "Paris, Berlin and Tokyo are capitals.",
    "User: hello<end_of_turn>\n<start_of_turn>model\nThe capital of France is Paris.",  # specials mid-text
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 3.14159",
    "The cat sat.",
]
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def samples(loaded):
    _, info, _ = loaded
    out = [corpus_pass.tokenize(info.tokenizer, t, MAX_TOKENS) for t in TEXTS]
    assert len({len(s) for s in out}) == len(out), "samples of different lengths exercise the padding"
    assert max(len(s) for s in out) > 16 and max(len(s) for s in out) == MAX_TOKENS
    return out


def _pass(backend, info, samples, records=False):
    tok = info.tokenizer
    return corpus_pass.run_batch(backend, samples, corpus_pass.special_ids(tok), corpus_pass.pad_id(tok),
                                 records=records)


def _reference_stats(fx, sae, info, samples, norm="none"):
    """count / sum / squared deviations from the mean / max over the positions that must count, from
    transformers' residuals."""
    special = set(info.tokenizer.all_special_ids)
    rows = []
    for ids in samples:
        acts = reference_acts(sae, residuals(fx.model_dir, ids, fx.sae_layer), norm).astype(np.float64)
        keep = [j for j, t in enumerate(ids) if j > 0 and t not in special]
        rows.append(acts[keep])
    a = np.concatenate(rows)
    fired = a > 0
    mean = a.sum(0) / np.maximum(fired.sum(0), 1)
    return len(a), fired.sum(0), a.sum(0), (np.where(fired, a - mean, 0.0) ** 2).sum(0), a.max(0)


def test_tokenize_is_bos_plus_text_truncated(loaded):
    _, info, _ = loaded
    tok = info.tokenizer
    ids = corpus_pass.tokenize(tok, TEXTS[0], 10)
    assert len(ids) == 10 and ids[0] == tok.bos_token_id
    assert ids[1:] == tok.encode(TEXTS[0], add_special_tokens=False)[:9]
    short = corpus_pass.tokenize(tok, "The cat sat.", 1000)
    assert short == [tok.bos_token_id] + tok.encode("The cat sat.", add_special_tokens=False)


def test_records_equal_the_prompt_features_of_generate(loaded, samples):
    backend, info, _ = loaded
    res = _pass(backend, info, samples, records=True)
    assert [len(r) for r in res.records] == [len(s) for s in samples]
    assert all(r.shape[1] == 2 + 2 * K for r in res.records), "packed top-k records, never dense activations"
    for ids, recs in zip(samples, res.records):
        steps = [s for s in generate(backend, ids, GenerationParams(max_tokens=1, prompt_features=True)) if s.prompt]
        assert len(steps) == len(ids)
        for j, step in enumerate(steps):
            f = features(recs[j])
            assert f.l0 == step.l0, (j, f.l0, step.l0)
            assert f.ids.shape == step.feature_ids.shape, j
            np.testing.assert_allclose(f.values, step.feature_values, rtol=1e-4, atol=0, err_msg=f"position {j}")
            for i in np.flatnonzero(f.ids != step.feature_ids):  # only a tie may swap two features
                assert abs(f.values[i] - step.feature_values[i]) <= 1e-4 * abs(step.feature_values[i]), (j, i)


def test_statistics_equal_a_numpy_reference_without_bos_specials_and_pads(loaded, samples, tiny_fixture):
    backend, info, sae = loaded
    special = set(info.tokenizer.all_special_ids)
    assert any(t in special for s in samples for t in s[1:]), "a special token in mid-text must be left out"
    st = _pass(backend, info, samples).stats
    n, count, total, m2, mx = _reference_stats(tiny_fixture, sae, info, samples)
    assert st.tokens == n == sum(len(s) for s in samples) - len(samples) - sum(
        t in special for s in samples for t in s[1:])
    np.testing.assert_array_equal(st.count, count)
    np.testing.assert_allclose(st.sum, total, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(st.m2, m2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(st.max, mx, rtol=1e-4, atol=1e-5)
    # the BOS position alone would change the statistics: leaving it out is visible
    bos_acts = reference_acts(sae, residuals(tiny_fixture.model_dir, samples[0], tiny_fixture.sae_layer))[0]
    assert (bos_acts > 0).sum() > 0 and not np.array_equal(count + (bos_acts > 0), st.count)


def test_batched_equals_one_sample_at_a_time(loaded, samples):
    backend, info, _ = loaded
    together = _pass(backend, info, samples, records=True)
    alone = [_pass(backend, info, [s], records=True) for s in samples]
    assert together.stats.tokens == sum(a.stats.tokens for a in alone)
    np.testing.assert_array_equal(together.stats.count, sum(a.stats.count for a in alone))
    np.testing.assert_allclose(together.stats.sum, sum(a.stats.sum for a in alone), rtol=1e-5, atol=1e-5)
    combined = Accumulator(len(together.stats.count))
    for a in alone:
        combined.add(a.stats, samples=1)
    np.testing.assert_allclose(together.stats.m2, combined.m2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(together.stats.max, np.max([a.stats.max for a in alone], axis=0), rtol=1e-5)
    for t, a in zip(together.records, alone):
        np.testing.assert_allclose(t, a.records[0], rtol=1e-5, atol=1e-5)


def test_rms_input_norm_is_honoured(tiny_fixture, loaded, samples):
    name = loaded[0].name
    backend, info, sae = load_backend(name, tiny_fixture, top_k=K, norm="rms")
    try:
        st = _pass(backend, info, samples[:2]).stats
    finally:
        backend.close()
    n, count, total, _, mx = _reference_stats(tiny_fixture, sae, info, samples[:2], "rms")
    assert st.tokens == n
    np.testing.assert_array_equal(st.count, count)
    np.testing.assert_allclose(st.sum, total, rtol=1e-4, atol=1e-4)
    raw = _reference_stats(tiny_fixture, sae, info, samples[:2], "none")
    assert not np.allclose(raw[2], total, rtol=1e-2), "rms and raw inputs must give different statistics"


def test_the_forward_stops_after_block_n(tiny_fixture, loaded, samples):
    """Later blocks and the logits play no part: poisoning every weight after block N changes nothing."""
    name = loaded[0].name
    backend, info, _ = load_backend(name, tiny_fixture, top_k=K)
    try:
        before = _pass(backend, info, samples[:2]).stats
        _poison_after(backend, tiny_fixture.sae_layer)
        after = _pass(backend, info, samples[:2]).stats
        poisoned = _logits_are_nan(backend, samples[0])
    finally:
        backend.close()
    assert poisoned, "the poison must reach a full forward, or this test proves nothing"
    np.testing.assert_array_equal(before.sum, after.sum)
    np.testing.assert_array_equal(before.count, after.count)


def _logits_are_nan(backend, ids) -> bool:
    if backend.name.startswith("torch"):
        import torch

        model = backend.model
        with torch.inference_mode():
            logits, _ = model.prefill(torch.tensor(ids), model.new_cache(256), capture=None, all_positions=False)
        return bool(torch.isnan(logits).all())
    import mlx.core as mx

    return bool(mx.isnan(backend.model(mx.array([ids]))).all())


def _poison_after(backend, layer: int) -> None:
    if backend.name.startswith("torch"):
        import torch

        with torch.no_grad():
            for block in backend.model.layers[layer + 1 :]:
                for p in block.parameters():
                    p.fill_(float("nan"))
            backend.model.model.norm.weight.fill_(float("nan"))
    else:
        import mlx.core as mx
        from mlx.utils import tree_map

        for block in backend.model.layers[layer + 1 :]:
            block.update(tree_map(lambda p: mx.full(p.shape, float("nan"), p.dtype), block.parameters()))
        norm = backend.model.model.norm
        norm.weight = mx.full(norm.weight.shape, float("nan"), norm.weight.dtype)


@pytest.mark.skipif(not {"mlx", "torch-cpu"} <= set(BACKENDS), reason="needs both mlx and torch-cpu")
def test_mlx_statistics_equal_torch_statistics(tiny_fixture):
    got = {}
    for name in ("mlx", "torch-cpu"):
        backend, info, _ = load_backend(name, tiny_fixture, top_k=K)
        try:
            samples = [corpus_pass.tokenize(info.tokenizer, t, MAX_TOKENS) for t in TEXTS]
            got[name] = _pass(backend, info, samples).stats
        finally:
            backend.close()
    m, t = got["mlx"], got["torch-cpu"]
    assert m.tokens == t.tokens
    np.testing.assert_array_equal(m.count, t.count)
    for key in ("sum", "m2", "max"):
        np.testing.assert_allclose(getattr(m, key), getattr(t, key), rtol=1e-4, atol=1e-5, err_msg=key)


def test_make_batch_marks_what_counts():
    b = corpus_pass.make_batch([[2, 10, 11, 4, 12], [2, 13]], skip={2, 4}, pad=0)
    assert b.tokens.tolist() == [[2, 10, 11, 4, 12], [2, 13, 0, 0, 0]]
    assert b.lengths.tolist() == [5, 2]
    assert b.counted.tolist() == [[False, True, True, False, True], [False, True, False, False, False]]
    first = corpus_pass.make_batch([[10, 11]], skip=set(), pad=0)  # no BOS: position 0 still never counts
    assert first.counted.tolist() == [[False, True]]
    with pytest.raises(ValueError):
        corpus_pass.make_batch([[2], []], skip=set())
