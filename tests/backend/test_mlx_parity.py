"""The MLX backend matches the torch-cpu backend step for step, past the sliding window.

The tiny checkpoint's sliding window (16) is shorter than every sequence here, so a Gemma-2 that ignored
the window (as mlx-lm's own ``gemma2.py`` does) would fail these tests; the last test shows that it does.
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (Linux: pip install 'mlx[cpu]')")
pytest.importorskip("mlx_lm", reason="mlx-lm is not installed")
torch = pytest.importorskip("torch", reason="torch is not installed: no reference to compare with")
import mlx.nn as nn  # noqa: E402

from backends.mlx_backend import MLXBackend  # noqa: E402
from backends.torch_backend import TorchCPUBackend  # noqa: E402
from neuroscope.core.decode import generate  # noqa: E402
from neuroscope.core.protocol import GenerationParams, ModelSpec, Step  # noqa: E402
from neuroscope.core.sae import load_npz  # noqa: E402
from tests.support.reference import hf_model  # noqa: E402

TOP_K = 32  # above the tiny SAE's L0 (~20), so some steps have fewer than k firing features
N_TOKENS = 160
LONG_TEXT = (
    "The river bends around the old mill where the village keeps its grain. In spring the water rises and "
    "the children watch the wheel turn faster, counting the boards."
)


@pytest.fixture(scope="module")
def backends(tiny_fixture):
    sae = load_npz(tiny_fixture.sae_path)
    spec = ModelSpec(str(tiny_fixture.model_dir))
    mlx_b, torch_b = MLXBackend(), TorchCPUBackend()
    info = mlx_b.load(spec, sae, tiny_fixture.sae_layer, top_k=TOP_K)
    torch_b.load(spec, sae, tiny_fixture.sae_layer, top_k=TOP_K)
    yield mlx_b, torch_b, info
    mlx_b.close()
    torch_b.close()


def _chat_prompt(tokenizer, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def assert_same_steps(got: list[Step], want: list[Step]) -> dict:
    """Identical tokens, positions, L0 and top-k ids (ties aside); activations within 1e-4 relative."""
    assert len(got) == len(want)
    worst = {"abs": 0.0, "rel": 0.0}
    for i, (a, b) in enumerate(zip(got, want)):
        where = f"step {i} (position {b.position}, prompt={b.prompt})"
        fields = lambda s: (s.token_id, s.position, s.prompt, s.finish_reason)  # noqa: E731
        assert fields(a) == fields(b), where
        assert a.l0 == b.l0, where
        assert a.feature_ids.shape == b.feature_ids.shape, where
        np.testing.assert_allclose(a.feature_values, b.feature_values, rtol=1e-4, err_msg=where)
        for j in np.flatnonzero(a.feature_ids != b.feature_ids):  # only a tie may swap two features
            assert np.sum(np.isclose(b.feature_values, b.feature_values[j], rtol=1e-4)) > 1, where
        if len(b.feature_values):
            diff = np.abs(a.feature_values - b.feature_values)
            worst["abs"] = max(worst["abs"], float(diff.max()))
            worst["rel"] = max(worst["rel"], float((diff / np.abs(b.feature_values)).max()))
    return worst


def test_greedy_parity_past_the_window(backends):
    mlx_b, torch_b, info = backends
    prompt = _chat_prompt(info.tokenizer, "Hi")
    assert len(prompt) < 16 < len(prompt) + N_TOKENS  # decoding crosses the window
    params = GenerationParams(max_tokens=N_TOKENS)
    got, want = list(generate(mlx_b, prompt, params)), list(generate(torch_b, prompt, params))
    assert len(got) == N_TOKENS and got[-1].finish_reason == "length"
    assert len({s.token_id for s in want}) > 10  # varied text, not one repeated token
    assert sum(len(s.feature_ids) for s in want) > N_TOKENS  # features fire
    worst = assert_same_steps(got, want)
    print(f"greedy parity over {N_TOKENS} tokens: max abs {worst['abs']:.2e}, max rel {worst['rel']:.2e}")


@pytest.mark.parametrize("prefill_chunk", [2048, 24, 7], ids=["one-chunk", "chunk-24", "chunk-7"])
def test_long_prompt_parity_with_prompt_features(backends, prefill_chunk):
    """A prompt longer than the window, prefilled whole or in chunks (longer and shorter than the window)."""
    mlx_b, torch_b, info = backends
    prompt = _chat_prompt(info.tokenizer, LONG_TEXT)
    assert len(prompt) >= 40
    params = GenerationParams(max_tokens=128, prompt_features=True)
    mlx_b.prefill_chunk = prefill_chunk
    try:
        got = list(generate(mlx_b, prompt, params))
    finally:
        mlx_b.prefill_chunk = 2048
    want = list(generate(torch_b, prompt, params))
    assert [s.prompt for s in got[: len(prompt)]] == [True] * len(prompt)
    assert [s.token_id for s in got[: len(prompt)]] == prompt
    assert [s.position for s in got] == list(range(len(prompt))) + [len(prompt) + i - 1 for i in range(128)]
    worst = assert_same_steps(got, want)
    print(f"long-prompt parity (prefill_chunk={prefill_chunk}): max abs {worst['abs']:.2e}, max rel {worst['rel']:.2e}")


def test_capture_off_is_plain_decoding(backends):
    mlx_b, _, info = backends
    prompt = _chat_prompt(info.tokenizer, "Hello there")
    params = GenerationParams(max_tokens=40, prompt_features=True)
    with_features = list(generate(mlx_b, prompt, params))
    mlx_b.capture = False
    try:
        plain = list(generate(mlx_b, prompt, params))
    finally:
        mlx_b.capture = True
    assert [s.token_id for s in plain] == [s.token_id for s in with_features if not s.prompt]
    assert all(s.l0 == 0 and s.feature_ids.size == 0 and s.feature_values.size == 0 for s in plain)
    assert not any(s.prompt for s in plain)


# --------------------------------------------------------------------------------- why not plain mlx-lm
class Recorder(nn.Module):
    """Wraps a decoder block and keeps its output (the list entry is swapped: MLX ignores ``__call__`` set on
    an instance)."""

    def __init__(self, inner: nn.Module, out: list):
        super().__init__()
        self.inner = inner
        self._out = out

    def __call__(self, *args, **kwargs):
        h = self.inner(*args, **kwargs)
        self._out.append(h)
        return h


def test_plain_mlx_lm_gemma2_drifts_past_the_window_and_ours_does_not(tiny_fixture):
    from mlx_lm.utils import load_model

    from backends.mlx_gemma2 import model_classes

    layer, seq, window = tiny_fixture.sae_layer, 64, tiny_fixture.shape.sliding_window
    ids = np.random.default_rng(0).integers(6, 400, size=seq).tolist()

    hf = hf_model(str(tiny_fixture.model_dir))
    with torch.inference_mode():
        ref = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states[layer + 1][0].numpy()

    plain, _ = load_model(tiny_fixture.model_dir)  # mlx-lm's own gemma2.py
    recorded: list = []
    plain.model.layers[layer] = Recorder(plain.model.layers[layer], recorded)
    plain(mx.array(ids)[None])
    plain_h = np.array(recorded[0][0])

    ours, _ = load_model(tiny_fixture.model_dir, get_model_classes=model_classes)
    _, captured = ours(mx.array(ids)[None], capture_layer=layer)
    ours_h = np.array(captured[0])

    scale = float(np.abs(ref).max())
    plain_in, plain_past = (np.abs(plain_h - ref)[s].max() / scale for s in (slice(0, window), slice(window, seq)))
    ours_err = np.abs(ours_h - ref).max() / scale
    print(
        f"block {layer} output vs transformers (relative to max |h| = {scale:.2f}): mlx-lm within window "
        f"{plain_in:.1e}, past window {plain_past:.1e}; ours {ours_err:.1e}"
    )
    assert plain_in < 1e-5  # the same model while the window covers the whole context...
    assert plain_past > 1e-2  # ...then mlx-lm's hidden states drift
    assert ours_err < 1e-5
