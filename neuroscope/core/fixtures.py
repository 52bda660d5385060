"""Build small Gemma-2 checkpoints offline: tokenizer + model + a matching JumpReLU SAE.

One builder serves the ``--demo`` server, the tests and the benchmarks. The output is a directory that
transformers' ``from_pretrained`` / ``AutoTokenizer`` and mlx-lm's loader both read, plus a ``params.npz`` in
Gemma Scope's layout. The weights are random (seeded, so every build is identical); they produce varied text,
not meaningful text. Nothing here imports torch or mlx.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from neuroscope.core.sae import SAEWeights, save_npz

FIXTURE_VERSION = 1

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]

# Gemma-2's own chat template (it rejects a system role; the server folds system messages into the first user turn).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

_CORPUS = """\
The river bends around the old mill where the village keeps its grain. In spring the water rises and the
children watch the wheel turn faster, counting the boards as they slap the current. Farmers bring wheat,
barley and oats; the miller weighs each sack, writes a number in his book and hands back a receipt.
A language model reads text one token at a time. Each layer adds a little to the residual stream, and a
sparse autoencoder splits that stream into features: a feature for dates, one for code, one for French,
one for the word "the" at the start of a sentence. Researchers watch which features fire and try to
explain them in plain words.
def add(a, b):
    return a + b
for i in range(10):
    print(i, add(i, i * 2))
The orchestra tuned for a long minute. Violins, cellos and a single oboe found the same A, and then the
conductor raised her hands. Music filled the hall: quiet at first, then loud, then quiet again.
Paris, Berlin, Tokyo, Nairobi and Lima are capitals. Mountains, rivers, deserts and oceans cover the earth.
In 1969 people walked on the moon; in 2026 small models run on laptops and phones.
Bonjour, comment allez-vous? Je vais bien, merci. Hola, ¿qué tal? Muy bien, gracias. Guten Tag!
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 3.14159 2.71828. Symbols: + - * / = < > ( ) [ ] { } " ' ? !
The cat sat on the mat. The dog chased the ball across the yard and barked at the mailman.
User: What is the capital of France? Model: The capital of France is Paris.
User: Write a haiku about autumn. Model: Red leaves drift and fall / the cold wind hums through bare trees / the year exhales slow.
"""


@dataclass(frozen=True)
class FixtureShape:
    name: str
    vocab_size: int  # >= the tokenizer's vocabulary; extra rows are never produced by the tokenizer
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    sliding_window: int
    max_position_embeddings: int
    sae_layer: int
    d_sae: int
    bpe_vocab: int = 512
    family: str = "gemma2"  # gemma2 | gemma3 (neuroscope/core/fixtures_gemma3.py)
    # Gemma-3 only: every pattern-th layer is global; the attention scale's denominator; global RoPE's linear factor
    sliding_window_pattern: int = 6
    query_pre_attn_scalar: int | None = None
    rope_scaling_factor: float | None = None
    sae_threshold: float = 3.6  # the random SAE's mean threshold, sized to the block's residual (random_sae)


SHAPES: dict[str, FixtureShape] = {
    # Tests, the demo and CPU benchmarks. The sliding window is shorter than test sequences on purpose.
    "tiny": FixtureShape("tiny", 512, 64, 128, 4, 4, 2, 16, 16, 1024, sae_layer=2, d_sae=256),
    # Gemma-2-2B's shapes with random weights, for realistic timing (GPU / Mac).
    "gemma-2-2b": FixtureShape(
        "gemma-2-2b", 256000, 2304, 9216, 26, 8, 4, 256, 4096, 8192, sae_layer=20, d_sae=16384
    ),
    # Gemma-3: six layers, globals at 2 and 5 (pattern 3), a window shorter than test sequences, linear RoPE
    # scaling on the global layers, an attention scalar that is not the head size.
    "tiny-gemma3": FixtureShape(
        "tiny-gemma3", 512, 64, 128, 6, 4, 2, 16, 16, 1024, sae_layer=3, d_sae=256, family="gemma3",
        sliding_window_pattern=3, query_pre_attn_scalar=24, rope_scaling_factor=8.0, sae_threshold=4.1,
    ),
    # Gemma-3 1B's shapes with random weights, for timing.
    "gemma-3-1b": FixtureShape(
        "gemma-3-1b", 262144, 1152, 6912, 26, 4, 1, 256, 512, 32768, sae_layer=17, d_sae=16384, family="gemma3",
        sliding_window_pattern=6, query_pre_attn_scalar=256,
    ),
}


def gemma2_config(shape: FixtureShape) -> dict:
    """A config.json for ``Gemma2ForCausalLM`` (read by transformers and mlx-lm alike)."""
    n = shape.num_hidden_layers
    return {
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": n,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_act": "gelu_pytorch_tanh",
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "query_pre_attn_scalar": shape.head_dim,
        "sliding_window": shape.sliding_window,
        "layer_types": ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)],
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
        "tie_word_embeddings": True,
        "pad_token_id": 0,
        "eos_token_id": [1, 5],
        "bos_token_id": 2,
        "torch_dtype": "float32",
        "dtype": "float32",
        "use_cache": True,
    }


def _template(shape: FixtureShape) -> str:
    if shape.family == "gemma3":
        from neuroscope.core.fixtures_gemma3 import GEMMA3_CHAT_TEMPLATE

        return GEMMA3_CHAT_TEMPLATE
    return GEMMA_CHAT_TEMPLATE


def build_tokenizer(out_dir: Path, vocab: int = 512, chat_template: str = GEMMA_CHAT_TEMPLATE) -> int:
    """Train a small byte-level BPE with Gemma's special tokens and chat template; return its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": 1_000_000,
                "add_bos_token": True,
                "add_eos_token": False,
                "clean_up_tokenization_spaces": False,
                "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
                "chat_template": chat_template,
                **specials,
            },
            indent=2,
        )
    )
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({**specials, "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}, indent=2)
    )
    (out_dir / "chat_template.jinja").write_text(chat_template)
    return tok.get_vocab_size()


def random_weights(shape: FixtureShape, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Random weights of the shape's family."""
    if shape.family == "gemma3":
        from neuroscope.core import fixtures_gemma3

        return fixtures_gemma3.random_weights(shape, seed, dtype)
    return gemma2_weights(shape, seed, dtype)


def gemma2_weights(shape: FixtureShape, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Random Gemma-2 weights, re-scaled so greedy decoding gives varied tokens.

    With tied embeddings a residual dominated by the input embedding predicts the same token again, so the
    embedding is small (std 0.02, x sqrt(hidden) inside Gemma) and the linear layers a little hot
    (1.5/sqrt(fan_in)): the layers' context-dependent outputs dominate the residual."""
    rng = np.random.default_rng(seed)
    h, inter = shape.hidden_size, shape.intermediate_size
    nq, nkv, hd = shape.num_attention_heads, shape.num_key_value_heads, shape.head_dim

    def lin(out_f: int, in_f: int) -> np.ndarray:
        return (rng.standard_normal((out_f, in_f), dtype=np.float32) * (1.5 / np.sqrt(in_f))).astype(dtype)

    def norm() -> np.ndarray:
        return (rng.standard_normal(h, dtype=np.float32) * 0.3).astype(dtype)

    w = {"model.embed_tokens.weight": (rng.standard_normal((shape.vocab_size, h), dtype=np.float32) * 0.02).astype(dtype)}
    for i in range(shape.num_hidden_layers):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = lin(nq * hd, h)
        w[p + "self_attn.k_proj.weight"] = lin(nkv * hd, h)
        w[p + "self_attn.v_proj.weight"] = lin(nkv * hd, h)
        w[p + "self_attn.o_proj.weight"] = lin(h, nq * hd)
        w[p + "mlp.gate_proj.weight"] = lin(inter, h)
        w[p + "mlp.up_proj.weight"] = lin(inter, h)
        w[p + "mlp.down_proj.weight"] = lin(h, inter)
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
            w[p + n + ".weight"] = norm()
    w["model.norm.weight"] = norm()
    return w


def random_sae(d_model: int, d_sae: int, seed: int = 1, threshold: float = 3.6) -> SAEWeights:
    """A random JumpReLU SAE in Gemma Scope's layout, sized to a model.

    The tiny model's raw block-2 residual has an RMS of about 2.6, so its pre-activations have a standard
    deviation near 2.6; thresholds around 3.6 let roughly 8 % of the features fire on a raw residual (L0 ~ 20
    of 256), and almost none on an RMS-normalised one, so the two input norms are easy to tell apart."""
    rng = np.random.default_rng(seed)
    W_enc = (rng.standard_normal((d_model, d_sae), dtype=np.float32) / np.sqrt(d_model)).astype(np.float32)
    b_enc = (rng.standard_normal(d_sae, dtype=np.float32) * 0.05).astype(np.float32)
    threshold = np.abs(threshold + rng.standard_normal(d_sae, dtype=np.float32) * 0.5).astype(np.float32)
    W_dec = np.ascontiguousarray(W_enc.T)
    b_dec = np.zeros(d_model, dtype=np.float32)
    return SAEWeights(W_enc, b_enc, threshold, W_dec, b_dec, source="random")


@contextlib.contextmanager
def atomic_dir(out: Path):
    """Yield an empty directory beside ``out``; when the block succeeds it replaces ``out`` whole, so an
    interrupted build never leaves a half-written checkpoint that looks complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_model_config(model_dir: Path, shape: FixtureShape, dtype: str = "float32") -> None:
    """config.json and generation_config.json of a fixture checkpoint."""
    if shape.family == "gemma3":
        from neuroscope.core import fixtures_gemma3

        cfg = fixtures_gemma3.text_config(shape)
        cfg["torch_dtype"] = dtype
    else:
        cfg = gemma2_config(shape)
        cfg["torch_dtype"] = cfg["dtype"] = dtype
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    (model_dir / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 2, "eos_token_id": [1, 5], "pad_token_id": 0}, indent=2)
    )


@dataclass(frozen=True)
class Fixture:
    root: Path
    model_dir: Path
    sae_path: Path
    sae_layer: int
    shape: FixtureShape

    @property
    def labels_path(self) -> Path:
        return self.root / "labels.json"


def build(out_dir: str | os.PathLike[str], shape: str | FixtureShape = "tiny", *, seed: int = 0) -> Fixture:
    """Write tokenizer + model + SAE + example labels into ``out_dir`` (atomically; reused when already built)."""
    from safetensors.numpy import save_file

    shp = SHAPES[shape] if isinstance(shape, str) else shape
    out = Path(out_dir)
    meta = {"version": FIXTURE_VERSION, "seed": seed, "shape": asdict(shp)}
    fixture = Fixture(out, out / "model", out / "sae" / "params.npz", shp.sae_layer, shp)
    meta_path = out / "fixture.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()) == meta and fixture.sae_path.is_file():
        return fixture
    with atomic_dir(out) as tmp:
        model_dir = tmp / "model"
        n_tok = build_tokenizer(model_dir, vocab=shp.bpe_vocab, chat_template=_template(shp))
        if n_tok > shp.vocab_size:
            raise ValueError(f"tokenizer has {n_tok} tokens but the model vocabulary is {shp.vocab_size}")
        write_model_config(model_dir, shp)
        save_file(random_weights(shp, seed), str(model_dir / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "sae").mkdir()
        save_npz(tmp / "sae" / "params.npz", random_sae(shp.hidden_size, shp.d_sae, seed + 1, shp.sae_threshold))
        labels = {str(i): f"random feature {i}" for i in range(0, shp.d_sae, 2)}
        (tmp / "labels.json").write_text(json.dumps(labels))
        (tmp / "README.txt").write_text(
            f"Random-weight {'Gemma-3' if shp.family == 'gemma3' else 'Gemma-2'} and JumpReLU SAE built by Neuroscope "
            "for its demo and tests.\n"
            "The weights are random: the text is varied but meaningless, and so are the features.\n"
        )
        (tmp / "fixture.json").write_text(json.dumps(meta))
    return fixture


def demo_fixture() -> Fixture:
    """The demo checkpoint, built once under the Neuroscope cache directory."""
    from neuroscope.store.paths import demo_dir

    return build(demo_dir(FIXTURE_VERSION), "tiny")
