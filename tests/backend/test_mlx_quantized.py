"""An mlx-community style 4-bit checkpoint (written by mlx-lm's own converter) loads and runs with features."""

from __future__ import annotations

import json

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (Linux: pip install 'mlx[cpu]')")
pytest.importorskip("mlx_lm", reason="mlx-lm is not installed")
import mlx.nn as nn  # noqa: E402

from backends.mlx_backend import MLXBackend  # noqa: E402
from neuroscope.core.decode import generate  # noqa: E402
from neuroscope.core.protocol import GenerationParams, ModelSpec  # noqa: E402
from neuroscope.core.sae import load_npz  # noqa: E402

BITS, GROUP = 4, 32  # the tiny model's rows are 64 wide: a group size of 32 or 64 divides them


@pytest.fixture(scope="module")
def quantized_dir(tiny_fixture, tmp_path_factory):
    from mlx_lm.convert import convert

    out = tmp_path_factory.mktemp("mlx-q") / "tiny-4bit"
    convert(str(tiny_fixture.model_dir), str(out), quantize=True, q_group_size=GROUP, q_bits=BITS)
    return out


@pytest.fixture(scope="module")
def loaded(tiny_fixture, quantized_dir):
    backend = MLXBackend()
    sae = load_npz(tiny_fixture.sae_path)
    info = backend.load(ModelSpec(str(quantized_dir)), sae, tiny_fixture.sae_layer, top_k=16)
    yield backend, info
    backend.close()


def test_checkpoint_is_mlx_community_style(quantized_dir):
    config = json.loads((quantized_dir / "config.json").read_text())
    assert config["quantization"] == {"group_size": GROUP, "bits": BITS, "mode": "affine"}
    assert (quantized_dir / "tokenizer.json").is_file()


def test_loads_quantized_layers_and_reports_them(loaded):
    backend, info = loaded
    block = backend.model.layers[0]
    for lin in (block.self_attn.q_proj, block.self_attn.o_proj, block.mlp.down_proj):
        assert isinstance(lin, nn.QuantizedLinear) and lin.bits == BITS and lin.group_size == GROUP
    assert isinstance(backend.model.model.embed_tokens, nn.QuantizedEmbedding)
    assert "4-bit" in info.dtype
    assert info.eos_token_ids == (1, 5)
    assert info.tokenizer.convert_tokens_to_ids("<end_of_turn>") == 5


def test_generates_with_features(loaded):
    backend, info = loaded
    prompt = info.tokenizer.encode("The river bends around the old mill where the village keeps its grain.")
    steps = list(generate(backend, prompt, GenerationParams(max_tokens=64, prompt_features=True)))
    generated = [s for s in steps if not s.prompt]
    assert len(steps) == len(prompt) + 64 and len(generated) == 64
    assert len({s.token_id for s in generated}) > 5
    assert np.mean([s.l0 for s in steps]) > 5  # the SAE fires on the quantized model's residual
    for s in steps:
        assert len(s.feature_ids) == len(s.feature_values) <= 16
        assert np.all(s.feature_values > 0) and np.all(np.diff(s.feature_values) <= 0)
        assert np.all((s.feature_ids >= 0) & (s.feature_ids < 256))


def test_same_logits_as_mlx_lm_within_the_window(quantized_dir, loaded):
    """Same quantized weights, same maths as mlx-lm's loader while the window covers the whole context."""
    from mlx_lm.utils import load_model

    backend, _ = loaded
    plain, _ = load_model(quantized_dir)
    short = mx.array([list(range(20, 32))])  # 12 tokens < window 16
    np.testing.assert_allclose(np.array(backend.model(short)), np.array(plain(short)), rtol=1e-5, atol=1e-5)
    long = mx.array([list(range(20, 60))])
    assert np.abs(np.array(backend.model(long)) - np.array(plain(long))).max() > 1e-2  # past it, mlx-lm drifts


def test_a_quantized_model_batches_each_request_as_alone(loaded):
    from tests.backend.test_batching import Collect, assert_same, run_batched, solo

    backend, info = loaded
    tok = info.tokenizer
    prompts = [tok.encode(t, add_special_tokens=False) for t in ("Hello there", "A story about a mill by the river")]
    reqs = [Collect(prompts[0], GenerationParams(max_tokens=12)),
            Collect(prompts[1], GenerationParams(max_tokens=12, temperature=0.8, seed=4), join_at=2)]
    sizes = run_batched(backend, reqs, max_batch=2, max_context=64)
    assert max(sizes) == 2
    for r in reqs:
        assert_same(r.steps, solo(backend, r))
