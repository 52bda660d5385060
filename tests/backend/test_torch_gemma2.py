"""Our torch Gemma-2 against transformers' on the tiny checkpoint (sliding window 16, shorter than these
sequences): the prefill, and every incremental decode step through the static KV cache, equal a full
recompute of the whole sequence by transformers — logits and block N's output alike. A cache that was
missing, stale or misaligned would make the steps drift from the recompute."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backends.torch_gemma2 import Gemma2, Gemma2Config, cache_size  # noqa: E402
from neuroscope.core import checkpoint  # noqa: E402
from tests.support.reference import hf_model  # noqa: E402

STEPS = 24
TOL = 1e-4


@pytest.fixture(scope="module")
def ours(tiny_fixture):
    config = checkpoint.read_config(tiny_fixture.model_dir)
    return Gemma2.from_checkpoint(tiny_fixture.model_dir, config, torch.float32, torch.device("cpu"))


def _prompt(n: int) -> list[int]:
    return np.random.default_rng(n).integers(10, 500, n).tolist()


def _full(tiny_fixture, ids: list[int], layer: int):
    with torch.inference_mode():
        out = hf_model(str(tiny_fixture.model_dir))(torch.tensor([ids]), output_hidden_states=True)
    return out.logits[0].float(), out.hidden_states[layer + 1][0].float()


@pytest.mark.parametrize("chunk", [2048, 7], ids=["one-chunk", "chunk-7"])
def test_prefill_equals_transformers(ours, tiny_fixture, chunk):
    layer = tiny_fixture.sae_layer
    ids = _prompt(40)
    with torch.inference_mode():
        logits, hidden = ours.prefill(torch.tensor(ids), ours.new_cache(cache_size(40)), capture=layer,
                                      all_positions=True, chunk=chunk)
    want_logits, want_hidden = _full(tiny_fixture, ids, layer)
    torch.testing.assert_close(hidden, want_hidden, rtol=TOL, atol=TOL)
    torch.testing.assert_close(logits[0], want_logits[-1], rtol=TOL, atol=TOL)


def test_incremental_decode_equals_a_full_recompute(ours, tiny_fixture):
    layer = tiny_fixture.sae_layer
    seq = _prompt(12)  # shorter than the window: the decode crosses it
    cache = ours.new_cache(cache_size(len(seq) + STEPS))
    with torch.inference_mode():
        logits, _ = ours.prefill(torch.tensor(seq), cache, capture=layer, all_positions=False)
        position = torch.tensor([len(seq)])
        for _ in range(STEPS):
            token = logits.argmax(-1)
            seq.append(int(token))
            logits, hidden = ours.step(token, position, cache, capture=layer)
            position = position + 1
            want_logits, want_hidden = _full(tiny_fixture, seq, layer)
            torch.testing.assert_close(logits[0], want_logits[-1], rtol=TOL, atol=TOL)
            torch.testing.assert_close(hidden[0], want_hidden[-1], rtol=TOL, atol=TOL)
    assert len(seq) > 2 * ours.cfg.sliding_window


def test_bfloat16_matches_transformers_in_bfloat16(tiny_fixture):
    config = checkpoint.read_config(tiny_fixture.model_dir)
    bf16 = Gemma2.from_checkpoint(tiny_fixture.model_dir, config, torch.bfloat16, torch.device("cpu"))
    assert bf16.dtype == torch.bfloat16
    ids = _prompt(30)
    with torch.inference_mode():
        logits, _ = bf16.prefill(torch.tensor(ids), bf16.new_cache(256), capture=None, all_positions=False)
        ref = hf_model(str(tiny_fixture.model_dir), "bfloat16")(torch.tensor([ids])).logits[0, -1].float()
    torch.testing.assert_close(logits[0].float(), ref, rtol=2e-2, atol=2e-2)
    assert int(logits.argmax()) == int(ref.argmax())


def test_config_spellings_of_every_transformers_release():
    base = {"model_type": "gemma2", "hidden_size": 64, "num_hidden_layers": 4, "intermediate_size": 128,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512}
    old = Gemma2Config.from_dict({**base, "rope_theta": 500.0})  # 4.x: top-level rope_theta, no layer_types
    new = Gemma2Config.from_dict({**base, "rope_parameters": {"rope_theta": 500.0, "rope_type": "default"}})
    assert old.rope_theta == new.rope_theta == 500.0
    assert [old.is_sliding(i) for i in range(4)] == [True, False, True, False]  # Gemma-2: even layers local
    with pytest.raises(ValueError, match="runs Gemma-2 models.*'llama'"):
        Gemma2Config.from_dict({**base, "model_type": "llama"})


def test_cache_sizes_are_few_and_large_enough():
    assert cache_size(1) == 256 and cache_size(256) == 256 and cache_size(257) == 512 and cache_size(5000) == 8192
