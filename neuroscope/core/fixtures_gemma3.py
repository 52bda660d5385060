"""Small Gemma-3 (text) checkpoints, offline: config, weights and chat template for the fixture builder.

Gemma-3 keeps Gemma-2's block (four ``(1 + w)`` RMSNorms, GeGLU, tied embeddings scaled by sqrt(hidden)) and
changes what the family modules must get right: q/k RMSNorms over the head dimension, local (sliding-window)
and global layers in a ``sliding_window_pattern`` (every ``pattern``-th layer global), their own RoPE bases
(``rope_local_base_freq`` for local layers, ``rope_theta`` with optional linear ``rope_scaling`` for global ones),
no soft-capping, and ``query_pre_attn_scalar`` independent of the head size. The config is written the way the
hub's Gemma-3 checkpoints are (transformers 4.50's spelling: no ``layer_types``, legacy RoPE keys), so readers
are tested on what users download. A multimodal variant (``Gemma3ForConditionalGeneration``: a sparse
``text_config``, the language model's weights under ``language_model.model.``, and a vision tower) is built
from the same weights, so serving it as text can be checked against the text-only checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Gemma-3's chat template: a system turn is folded into the first user turn; content may be a list of parts.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}{%- elif item['type'] == 'text' -%}"
    "{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}{%- else -%}"
    "{{ raise_exception(\"Invalid content type\") }}{%- endif -%}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)


def layer_types(n_layers: int, pattern: int) -> list[str]:
    """Gemma-3's layout: every ``pattern``-th layer is global, the others local."""
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)]


def text_config(shape) -> dict:
    """A ``Gemma3ForCausalLM`` config.json in the hub's spelling (transformers 4.50)."""
    scaling = {"rope_type": "linear", "factor": shape.rope_scaling_factor} if shape.rope_scaling_factor else None
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "rope_scaling": scaling,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "query_pre_attn_scalar": shape.query_pre_attn_scalar or shape.head_dim,
        "sliding_window": shape.sliding_window,
        "sliding_window_pattern": shape.sliding_window_pattern,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "cache_implementation": "hybrid",
        "tie_word_embeddings": True,
        "pad_token_id": 0,
        "eos_token_id": [1, 5],
        "bos_token_id": 2,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def multimodal_config(shape) -> dict:
    """A ``Gemma3ForConditionalGeneration`` config.json: the text model's settings under ``text_config`` (only
    those that differ from ``Gemma3TextConfig``'s defaults are spelled out on the hub; here all are), plus a
    vision tower's."""
    text = {k: v for k, v in text_config(shape).items() if k not in ("architectures", "torch_dtype", "use_cache")}
    return {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": text,
        "vision_config": {
            "model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "image_size": 28, "patch_size": 14, "vision_use_head": False,
        },
        "mm_tokens_per_image": 4,
        "boi_token_index": 6,
        "eoi_token_index": 7,
        "image_token_index": 8,
        "eos_token_id": [1, 5],
        "bos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }


def random_weights(shape, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Gemma-2's random weights (same scaling, so greedy text varies) plus the q/k norms of every layer."""
    from neuroscope.core.fixtures import gemma2_weights

    w = gemma2_weights(shape, seed, dtype)
    rng = np.random.default_rng(seed + 100)
    for i in range(shape.num_hidden_layers):
        for name in ("q_norm", "k_norm"):
            w[f"model.layers.{i}.self_attn.{name}.weight"] = (
                rng.standard_normal(shape.head_dim, dtype=np.float32) * 0.3
            ).astype(dtype)
    return w


def multimodal_weights(text: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """The text weights as a multimodal checkpoint stores them, beside a (tiny, random) vision tower."""
    rng = np.random.default_rng(seed + 200)
    out = {"language_model." + k: v for k, v in text.items()}
    out["vision_tower.vision_model.embeddings.patch_embedding.weight"] = rng.standard_normal((16, 3, 14, 14),
                                                                                            dtype=np.float32)
    out["multi_modal_projector.mm_input_projection_weight"] = rng.standard_normal((16, 64), dtype=np.float32)
    return out


def write_multimodal(fixture_model_dir: Path, out_dir: Path, shape, seed: int = 0) -> Path:
    """A multimodal Gemma-3 checkpoint holding the same language model as ``fixture_model_dir``."""
    import shutil

    from safetensors.numpy import load_file, save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    for f in fixture_model_dir.iterdir():
        if f.name not in ("config.json", "model.safetensors") and f.is_file():
            shutil.copy2(f, out_dir / f.name)
    (out_dir / "config.json").write_text(json.dumps(multimodal_config(shape), indent=2))
    text = load_file(str(fixture_model_dir / "model.safetensors"))
    save_file(multimodal_weights(text, seed), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir
