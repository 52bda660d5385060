"""The models the decode benchmark runs: the tiny fixture, a Gemma-2-2B-shaped random checkpoint, or ``--model``.

The Gemma-2-2B-shaped checkpoint is written once, in bfloat16 (about 5.2 GB rather than 10.4 GB of float32),
into the benchmark cache with the fixture builder's tokenizer, config and weight recipe, so that transformers,
Neuroscope's backends and mlx-lm all load the very same weights through their ordinary loaders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuroscope.core import fixtures
from neuroscope.core.sae import SAEWeights, load_npz

CHECKPOINT_VERSION = 1
PROMPT = (
    "The river bends around the old mill where the village keeps its grain. A language model reads text one "
    "token at a time, and a sparse autoencoder splits the residual stream into features."
)


@dataclass
class BenchModel:
    label: str  # "tiny", "gemma-2-2b (random)", or the --model id
    path: Path | str
    dtype: str
    sae: SAEWeights
    layer: int
    hidden_size: int
    n_layers: int
    vocab_size: int

    @property
    def approx_params(self) -> int:
        """Embedding + ~12 h^2 per decoder layer: enough to tell a tiny model from a big one."""
        return self.vocab_size * self.hidden_size + 12 * self.n_layers * self.hidden_size**2


def tiny(cache: Path, dtype: str | None) -> BenchModel:
    fx = fixtures.build(cache / f"tiny-v{fixtures.FIXTURE_VERSION}", "tiny")
    s = fx.shape
    return BenchModel("tiny", fx.model_dir, dtype or "float32", load_npz(fx.sae_path), fx.sae_layer,
                      s.hidden_size, s.num_hidden_layers, s.vocab_size)


def gemma2_2b(cache: Path, dtype: str | None, d_sae: int, log=print) -> BenchModel:
    shape = fixtures.SHAPES["gemma-2-2b"]
    model_dir = write_bf16_checkpoint(cache / f"gemma-2-2b-bf16-v{CHECKPOINT_VERSION}", shape, log=log)
    sae = fixtures.random_sae(shape.hidden_size, d_sae)
    return BenchModel("gemma-2-2b (random)", model_dir, dtype or "bfloat16", sae, shape.sae_layer,
                      shape.hidden_size, shape.num_hidden_layers, shape.vocab_size)


# a ~115M-parameter Gemma-2 (12 layers of 768): big enough that a CPU step is matmuls, not per-op overhead
SMALL = fixtures.FixtureShape("gemma-2-100m", 16384, 768, 3072, 12, 12, 4, 64, 512, 4096, sae_layer=8, d_sae=4096)


def gemma2_100m(cache: Path, dtype: str | None, log=print) -> BenchModel:
    model_dir = write_bf16_checkpoint(cache / f"gemma-2-100m-bf16-v{CHECKPOINT_VERSION}", SMALL, log=log)
    sae = fixtures.random_sae(SMALL.hidden_size, SMALL.d_sae)
    return BenchModel("gemma-2-100m (random)", model_dir, dtype or "float32", sae, SMALL.sae_layer,
                      SMALL.hidden_size, SMALL.num_hidden_layers, SMALL.vocab_size)


def external(name_or_path: str, dtype: str | None, d_sae: int, layer: int | None) -> BenchModel:
    """A real model (hub id in the local cache, or a directory) with a random SAE sized to it."""
    from transformers import AutoConfig

    from neuroscope.core.loading import model_load_error

    try:
        cfg = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise model_load_error(name_or_path, exc) from exc
    cfg = getattr(cfg, "text_config", cfg)
    n_layers = int(cfg.num_hidden_layers)
    lay = layer if layer is not None else (n_layers * 3) // 4
    sae = fixtures.random_sae(int(cfg.hidden_size), d_sae)
    return BenchModel(name_or_path, name_or_path, dtype or "bfloat16", sae, lay,
                      int(cfg.hidden_size), n_layers, int(cfg.vocab_size))


def write_bf16_checkpoint(out: Path, shape: fixtures.FixtureShape, *, seed: int = 0, log=print) -> Path:
    """Write (once) a Gemma-2 checkpoint of ``shape`` with the fixture's random weights stored as bfloat16."""
    import torch
    from safetensors.torch import save_file

    meta = {"version": CHECKPOINT_VERSION, "seed": seed, "shape": shape.name}
    model_dir = out / "model"
    if (out / "checkpoint.json").is_file() and json.loads((out / "checkpoint.json").read_text()) == meta:
        return model_dir
    log(f"writing a random {shape.name}-shaped bf16 checkpoint to {out} (once; a few GB)")
    with fixtures.atomic_dir(out) as tmp:
        mdir = tmp / "model"
        fixtures.build_tokenizer(mdir, vocab=shape.bpe_vocab)
        fixtures.write_model_config(mdir, shape, dtype="bfloat16")
        # float16 halves the peak host memory of the fixture recipe; every value is then stored as bfloat16
        weights = fixtures.random_weights(shape, seed, dtype=np.float16)
        tensors = {}
        for name in list(weights):
            tensors[name] = torch.from_numpy(weights.pop(name)).to(torch.bfloat16)
        save_file(tensors, str(mdir / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        (tmp / "checkpoint.json").write_text(json.dumps(meta))
    return model_dir


def prompt_ids(model_path: Path | str, length: int | None = None) -> list[int]:
    """The benchmark prompt's ids; with ``length``, exactly that many (the text repeated, then cut)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path))
    ids = list(tok(PROMPT)["input_ids"])
    if length is None:
        return ids
    more = list(tok(" " + PROMPT, add_special_tokens=False)["input_ids"])
    while len(ids) < length:
        ids += more
    return ids[:length]
