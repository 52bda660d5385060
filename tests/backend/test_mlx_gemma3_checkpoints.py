"""Gemma-3 checkpoints as users download them, on the MLX backend: multimodal ones (the hub's layout with a sparse
``text_config``, and transformers 5's) serve exactly what the text-only checkpoint serves; hub configs read as
transformers reads them; an mlx-community style quantized checkpoint runs; other families are refused in one line.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (Linux: pip install 'mlx[cpu]')")
pytest.importorskip("mlx_lm", reason="mlx-lm is not installed")
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from backends.mlx_backend import MLXBackend  # noqa: E402
from neuroscope.core import fixtures_gemma3  # noqa: E402
from neuroscope.core.decode import generate  # noqa: E402
from neuroscope.core.protocol import BackendError, GenerationParams, ModelSpec  # noqa: E402
from neuroscope.core.sae import load_npz  # noqa: E402

K = 16
TEXT = "The river bends around the old mill where the village keeps its grain, and the wheel turns."
# what the hub's configs leave out of a multimodal text_config: Gemma3TextConfig's defaults
DEFAULTED = ("rms_norm_eps", "rope_theta", "rope_local_base_freq", "final_logit_softcapping", "attn_logit_softcapping",
             "hidden_activation", "attention_bias", "attention_dropout", "tie_word_embeddings", "cache_implementation",
             "pad_token_id", "bos_token_id", "eos_token_id")


def _load(model_dir, fx):
    backend = MLXBackend()
    info = backend.load(ModelSpec(str(model_dir)), load_npz(fx.sae_path), fx.sae_layer, top_k=K)
    return backend, info


def _serve(backend, info, n: int = 40):
    prompt = info.tokenizer.encode(TEXT)
    assert len(prompt) > 16, "the prompt is longer than the window"
    return list(generate(backend, prompt, GenerationParams(max_tokens=n, prompt_features=True, logprobs=1)))


@pytest.fixture(scope="module")
def text_run(tiny_gemma3_fixture):
    backend, info = _load(tiny_gemma3_fixture.model_dir, tiny_gemma3_fixture)
    try:
        yield info, _serve(backend, info)
    finally:
        backend.close()


def _hub_multimodal(fx, out):
    """The hub's layout: ``language_model.model.*`` beside a vision tower, a sparse ``text_config``."""
    fixtures_gemma3.write_multimodal(fx.model_dir, out, fx.shape)
    config = json.loads((out / "config.json").read_text())
    config["text_config"] = {k: v for k, v in config["text_config"].items() if k not in DEFAULTED}
    (out / "config.json").write_text(json.dumps(config))
    return out


def _transformers5_multimodal(fx, out):
    """transformers 5's layout: ``model.language_model.*``, ``model.vision_tower.*``, an ``lm_head``, and a
    text_config with ``layer_types`` and ``rope_parameters`` per layer type (its pattern left at 6, which
    ``layer_types`` overrides)."""
    from safetensors.numpy import load_file, save_file

    hub = fixtures_gemma3.write_multimodal(fx.model_dir, out, fx.shape)
    weights = {}
    for k, v in load_file(str(hub / "model.safetensors")).items():
        if k.startswith("language_model.model."):
            weights["model.language_model." + k.removeprefix("language_model.model.")] = v
        else:
            weights["model." + k] = v
    weights["lm_head.weight"] = weights["model.language_model.embed_tokens.weight"]
    save_file(weights, str(hub / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((hub / "config.json").read_text())
    text = config["text_config"]
    scaling = text.pop("rope_scaling")
    text["rope_parameters"] = {
        "full_attention": {**scaling, "rope_theta": text.pop("rope_theta")},
        "sliding_attention": {"rope_type": "default", "rope_theta": text.pop("rope_local_base_freq")},
    }
    text["layer_types"] = fixtures_gemma3.layer_types(fx.shape.num_hidden_layers, fx.shape.sliding_window_pattern)
    text["sliding_window_pattern"] = 6
    (hub / "config.json").write_text(json.dumps(config))
    return hub


@pytest.mark.parametrize("layout", ["hub", "transformers5"])
def test_a_multimodal_checkpoint_serves_its_language_model_as_text(tiny_gemma3_fixture, tmp_path, text_run, layout):
    fx = tiny_gemma3_fixture
    make = _hub_multimodal if layout == "hub" else _transformers5_multimodal
    model_dir = make(fx, tmp_path / layout)
    text_info, want = text_run
    backend, info = _load(model_dir, fx)
    try:
        got = _serve(backend, info)
        names = [k for k, _ in tree_flatten(backend.model.parameters())]
    finally:
        backend.close()
    assert not any("vision" in k or "projector" in k or "lm_head" in k for k in names)
    for field in ("n_layers", "d_model", "vocab_size", "context_length", "sliding_window", "eos_token_ids"):
        assert getattr(info, field) == getattr(text_info, field), field
    assert [s.token_id for s in got] == [s.token_id for s in want]
    for a, b in zip(got, want):
        assert (a.position, a.prompt, a.l0, a.logprob) == (b.position, b.prompt, b.l0, b.logprob)
        np.testing.assert_array_equal(a.feature_ids, b.feature_ids)
        np.testing.assert_array_equal(a.feature_values, b.feature_values)


# configs as the hub's gemma-3-1b-it (text), gemma-3-4b-it and gemma-3-27b-it (multimodal) spell them
HUB_CONFIGS = {
    "1b": {"architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
           "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid",
           "eos_token_id": [1, 106], "final_logit_softcapping": None, "head_dim": 256,
           "hidden_activation": "gelu_pytorch_tanh",
           "hidden_size": 1152, "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768,
           "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
           "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
           "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
           "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 262144},
    "4b": {"architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
           "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
           "model_type": "gemma3",
           "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                           "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                           "sliding_window": 1024},
           "torch_dtype": "bfloat16",
           "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                             "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                             "patch_size": 14, "vision_use_head": False}},
    "27b": {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "mm_tokens_per_image": 256,
            "text_config": {"head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504,
                            "model_type": "gemma3_text", "num_attention_heads": 32, "num_hidden_layers": 62,
                            "num_key_value_heads": 16, "query_pre_attn_scalar": 168,
                            "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 896,
                              "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 27,
                              "patch_size": 14, "vision_use_head": False}},
}


def _hf_rope(tc, layer_type: str) -> tuple[float, float]:
    """(base, nn.RoPE scale) of a layer type as transformers resolved it (5.x: rope_parameters; 4.5x: legacy)."""
    params = getattr(tc, "rope_parameters", None)
    if isinstance(params, dict) and layer_type in params:
        p = params[layer_type]
    elif layer_type == "sliding_attention":
        p = {"rope_theta": tc.rope_local_base_freq}
    else:
        p = {"rope_theta": tc.rope_theta, **(tc.rope_scaling or {})}
    linear = p.get("rope_type", p.get("type")) == "linear"
    return float(p["rope_theta"]), 1.0 / float(p["factor"]) if linear else 1.0


@pytest.mark.parametrize("name", list(HUB_CONFIGS))
def test_hub_configs_read_as_transformers_reads_them(name):
    transformers = pytest.importorskip("transformers")
    if tuple(int(p) for p in transformers.__version__.split(".")[:2]) < (4, 50):
        pytest.skip(f"transformers {transformers.__version__} has no Gemma-3 config to compare with (added in 4.50)")
    from backends.mlx_gemma3 import ModelArgs
    from backends.mlx_models import model_classes

    config = HUB_CONFIGS[name]
    assert model_classes(config)[1] is ModelArgs
    args = ModelArgs.from_dict(json.loads(json.dumps(config)))
    if config["model_type"] == "gemma3":
        tc = transformers.Gemma3Config(text_config=dict(config["text_config"]), vision_config=config["vision_config"])
        tc = tc.text_config
    else:
        tc = transformers.Gemma3TextConfig(**{k: v for k, v in config.items() if k != "model_type"})
    for field in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                  "head_dim", "vocab_size", "rms_norm_eps", "query_pre_attn_scalar", "sliding_window",
                  "max_position_embeddings", "final_logit_softcapping", "attn_logit_softcapping", "layer_types"):
        assert getattr(args, field) == getattr(tc, field), field
    for layer_type in ("sliding_attention", "full_attention"):
        assert args.rope[layer_type] == pytest.approx(_hf_rope(tc, layer_type)), layer_type
    assert args.layer_types.count("full_attention") == args.num_hidden_layers // 6


@pytest.mark.parametrize("change, message", [
    ({"model_type": "llama"}, "unsupported model_type 'llama': the mlx backend runs Gemma-2 (gemma2) and Gemma-3"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported RoPE type 'yarn'"),
    ({"layer_types": ["sliding_attention"] * 5 + ["chunked_attention"]}, "unsupported Gemma-3 layer types"),
    ({"use_bidirectional_attention": True}, "bidirectional"),
])
def test_a_checkpoint_it_cannot_run_is_refused_in_one_line(tiny_gemma3_fixture, tmp_path, change, message):
    fx = tiny_gemma3_fixture
    model_dir = shutil.copytree(fx.model_dir, tmp_path / "model")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(BackendError) as err:
        _load(model_dir, fx)
    text = str(err.value)
    assert message in text and "\n" not in text and text.startswith("cannot load model")


BITS, GROUP = 4, 32


def test_a_quantized_checkpoint_runs_with_features_and_equals_mlx_lm(tiny_gemma3_fixture, tmp_path):
    """mlx-lm's converter writes the 4-bit checkpoint; ours runs the same quantized maths as mlx-lm's own
    ``gemma3_text`` (which keeps the window too: measured equal to transformers in float32)."""
    from mlx_lm.convert import convert
    from mlx_lm.utils import load_model

    fx = tiny_gemma3_fixture
    out = tmp_path / "tiny-gemma3-4bit"
    convert(str(fx.model_dir), str(out), quantize=True, q_group_size=GROUP, q_bits=BITS)
    backend, info = _load(out, fx)
    try:
        attn = backend.model.layers[0].self_attn
        assert isinstance(attn.q_proj, nn.QuantizedLinear) and attn.q_proj.bits == BITS
        assert isinstance(backend.model.model.embed_tokens, nn.QuantizedEmbedding)
        assert "4-bit" in info.dtype and info.eos_token_ids == (1, 5)
        steps = _serve(backend, info)
        assert len({s.token_id for s in steps if not s.prompt}) > 5 and np.mean([s.l0 for s in steps]) > 3
        plain, _ = load_model(out)
        ids = mx.array([np.random.default_rng(1).integers(6, 500, size=48).tolist()])  # past the window
        np.testing.assert_allclose(np.array(backend.model(ids)), np.array(plain(ids)), rtol=1e-4, atol=1e-4)
    finally:
        backend.close()
