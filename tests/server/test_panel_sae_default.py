"""The start-up panel says when the SAE is the model's default from the registry, and not otherwise."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from neuroscope.config import ServeConfig, with_sae
from neuroscope.core.fixtures import random_sae
from neuroscope.labels.sources import build_chain
from neuroscope.server.app import Bound
from neuroscope.server.serve import _panel, _namespace


def panel_text(config: ServeConfig, *, demo: bool = False) -> str:
    rt = SimpleNamespace(
        config=config, demo=demo, fallback_reason=None, feature_filter=None, filter_warning=None, engine=None,
        info=SimpleNamespace(model_id=config.model, n_layers=26, device="cpu", dtype="float32"),
        sae=random_sae(8, 32), sae_id=f"{config.sae}/{config.sae_path}", backend=SimpleNamespace(name="torch-cpu"),
        labels=build_chain(_namespace(config), 32, neuronpedia=False),
    )
    screen = io.StringIO()
    Console(file=screen, width=250, color_system=None).print(_panel(rt, Bound("127.0.0.1", 8080, 8081)))
    return " ".join(screen.getvalue().replace("│", " ").split())


def test_the_panel_says_the_sae_is_the_models_default(cache):
    text = panel_text(with_sae(ServeConfig(model="google/gemma-3-1b-it", sae_layer=17)))
    assert "google/gemma-scope-2-1b-it/resid_post/layer_17_width_16k_l0_medium" in text
    assert "the default SAE of google/gemma-3-1b-it, from the registry" in text
    named = ServeConfig(model="google/gemma-3-1b-it", sae="google/gemma-scope-2-1b-it",
                        sae_path="resid_post/layer_13_width_65k_l0_medium", sae_layer=13)
    assert "the default SAE of" not in panel_text(named)
    moved = panel_text(with_sae(ServeConfig(model="google/gemma-3-1b-it", sae_layer=13)))
    assert "google/gemma-scope-2-1b-it/resid_post/layer_13_width_16k_l0_medium" in moved
    assert "the default SAE of google/gemma-3-1b-it, from the registry moved to layer 13" in moved
    assert "moved to layer" not in text
