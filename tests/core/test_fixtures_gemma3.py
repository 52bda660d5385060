"""The offline Gemma-3 fixture: written as the hub writes Gemma-3 checkpoints, read by transformers as Gemma-3."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from neuroscope.core import fixtures, fixtures_gemma3


def test_config_is_in_the_hubs_spelling(tiny_gemma3_fixture):
    cfg = json.loads((tiny_gemma3_fixture.model_dir / "config.json").read_text())
    assert cfg["model_type"] == "gemma3_text" and "layer_types" not in cfg
    assert cfg["sliding_window_pattern"] == 3 and cfg["rope_local_base_freq"] == 10_000.0
    assert cfg["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    assert cfg["final_logit_softcapping"] is None and cfg["attn_logit_softcapping"] is None
    assert fixtures_gemma3.layer_types(6, 3) == ["sliding_attention", "sliding_attention", "full_attention"] * 2
    w = load_file(str(tiny_gemma3_fixture.model_dir / "model.safetensors"))
    assert w["model.layers.5.self_attn.q_norm.weight"].shape == (16,)
    assert w["model.layers.0.self_attn.k_norm.weight"].shape == (16,)


def test_builds_are_identical(tmp_path, tiny_gemma3_fixture):
    again = fixtures.build(tmp_path / "again", "tiny-gemma3")
    a = load_file(str(again.model_dir / "model.safetensors"))
    b = load_file(str(tiny_gemma3_fixture.model_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_multimodal_twin_holds_the_same_language_model(tmp_path, tiny_gemma3_fixture):
    out = fixtures_gemma3.write_multimodal(tiny_gemma3_fixture.model_dir, tmp_path / "mm", tiny_gemma3_fixture.shape)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "gemma3" and cfg["text_config"]["model_type"] == "gemma3_text"
    mm = load_file(str(out / "model.safetensors"))
    text = load_file(str(tiny_gemma3_fixture.model_dir / "model.safetensors"))
    assert all(np.array_equal(mm["language_model." + k], v) for k, v in text.items())
    assert any(k.startswith("vision_tower.") for k in mm)
    assert (out / "tokenizer.json").is_file()


def test_transformers_reads_it_as_gemma3_and_greedy_text_varies(tiny_gemma3_fixture):
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Gemma3ForCausalLM"):
        pytest.skip(f"transformers {transformers.__version__} has no Gemma-3 (4.50 or later has)")
    import torch

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_gemma3_fixture.model_dir, dtype=torch.float32)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.layer_types[2] == "full_attention" and model.config.layer_types[3] == "sliding_attention"
    ids = torch.tensor([[2, 40, 41, 42, 43]])
    out = model.generate(ids, max_new_tokens=24, do_sample=False)[0, 5:].tolist()
    assert len(set(out)) >= 4
