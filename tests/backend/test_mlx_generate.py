"""The MLX backend's protocol behaviour: loading, sampling, EOS, filters, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (Linux: pip install 'mlx[cpu]')")
pytest.importorskip("mlx_lm", reason="mlx-lm is not installed")

from backends.mlx_backend import MLXBackend  # noqa: E402
from neuroscope.core import registry  # noqa: E402
from neuroscope.core.decode import generate  # noqa: E402
from neuroscope.core.protocol import Backend, BackendError, FeatureFilter, GenerationParams, ModelSpec  # noqa: E402
from neuroscope.core.sae import SAEError, load_npz  # noqa: E402

K = 8


@pytest.fixture(scope="module")
def sae(tiny_fixture):
    return load_npz(tiny_fixture.sae_path)


@pytest.fixture(scope="module")
def loaded(tiny_fixture, sae):
    backend = MLXBackend()
    info = backend.load(ModelSpec(str(tiny_fixture.model_dir)), sae, tiny_fixture.sae_layer, top_k=K)
    yield backend, info
    backend.close()


@pytest.fixture(scope="module")
def prompt(loaded):
    _, info = loaded
    return list(info.tokenizer.encode("User: What is the capital of France? Model:"))


def _tokens(steps):
    return [s.token_id for s in steps if not s.prompt]


def test_registry_and_protocol():
    assert registry.backend_class("mlx") is MLXBackend
    assert MLXBackend.is_available() and "mlx" in registry.available()
    assert "mlx" in MLXBackend.install_hint()
    assert isinstance(MLXBackend(), Backend)


def test_model_info(loaded, tiny_fixture):
    backend, info = loaded
    shape = tiny_fixture.shape
    assert (info.n_layers, info.d_model) == (shape.num_hidden_layers, shape.hidden_size)
    assert info.vocab_size == shape.vocab_size
    assert info.context_length == shape.max_position_embeddings
    assert info.dtype == "float32"
    # the device users see in the start-up panel is the one MLX computes on
    if mx.default_device().type == mx.cpu:
        assert info.device == "cpu (mlx)"
    else:
        assert info.device.startswith(("metal", "gpu"))
    assert info.eos_token_ids == (1, 5)  # <eos> and <end_of_turn>
    ids = info.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert "<start_of_turn>model" in info.tokenizer.decode(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_greedy_is_deterministic_and_positions_follow_the_prompt(loaded, prompt):
    backend, _ = loaded
    params = GenerationParams(max_tokens=20)
    a, b = list(generate(backend, prompt, params)), list(generate(backend, prompt, params))
    assert _tokens(a) == _tokens(b)
    assert [s.position for s in a] == [len(prompt) - 1 + i for i in range(20)]
    assert [s.finish_reason for s in a] == [None] * 19 + ["length"]
    assert all(s.l0 >= len(s.feature_ids) for s in a)


def test_seeded_sampling(loaded, prompt):
    backend, _ = loaded

    def run(seed, **kw):
        return _tokens(generate(backend, prompt, GenerationParams(max_tokens=30, temperature=1.5, seed=seed, **kw)))

    greedy = _tokens(generate(backend, prompt, GenerationParams(max_tokens=30)))
    assert run(1) == run(1)
    assert run(1) != run(2)
    assert run(1) != greedy
    assert run(1, top_p=1e-6) == greedy  # a nucleus this small keeps only the most likely token


def test_stops_on_eos_and_yields_it(loaded, prompt):
    backend, _ = loaded
    greedy = _tokens(generate(backend, prompt, GenerationParams(max_tokens=30)))
    eos = greedy[6]
    first = greedy.index(eos)
    steps = list(generate(backend, prompt, GenerationParams(max_tokens=30, eos_token_ids=frozenset({eos}))))
    assert len(steps) == first + 1
    assert steps[-1].token_id == eos and steps[-1].finish_reason == "stop"
    assert steps[-1].feature_ids.size > 0  # the EOS step still carries its features


def test_filter_changes_features_not_tokens(loaded, prompt):
    backend, _ = loaded
    params = GenerationParams(max_tokens=24)
    base = list(generate(backend, prompt, params))
    banned = {int(s.feature_ids[0]) for s in base if s.feature_ids.size}
    mask = np.ones(256, bool)
    mask[list(banned)] = False
    backend.set_feature_filter(FeatureFilter(mask=mask))
    try:
        masked = list(generate(backend, prompt, params))
    finally:
        backend.set_feature_filter(FeatureFilter())
    assert _tokens(masked) == _tokens(base)
    assert [s.l0 for s in masked] == [s.l0 for s in base]
    assert not any(banned & set(s.feature_ids.tolist()) for s in masked)
    assert sum(s.feature_ids.size for s in masked) > 0
    assert [s.feature_ids.tolist() for s in generate(backend, prompt, params)] == [s.feature_ids.tolist() for s in base]


def test_bfloat16_sae(tiny_fixture, sae, loaded, prompt):
    f32, _ = loaded
    bf16 = MLXBackend()
    info = bf16.load(ModelSpec(str(tiny_fixture.model_dir)), sae, tiny_fixture.sae_layer, top_k=K, sae_dtype="bfloat16")
    assert info.sae_dtype == "bfloat16"
    params = GenerationParams(max_tokens=24)
    a, b = list(generate(bf16, prompt, params)), list(generate(f32, prompt, params))
    assert _tokens(a) == _tokens(b)  # the SAE's precision never touches the model
    overlap = [len(set(x.feature_ids) & set(y.feature_ids)) / max(1, len(y.feature_ids)) for x, y in zip(a, b)]
    assert np.mean(overlap) > 0.9


def test_load_errors(tiny_fixture, sae, tmp_path):
    with pytest.raises(BackendError, match="cannot load model"):
        MLXBackend().load(ModelSpec(str(tmp_path / "missing")), sae, 0, top_k=K)
    with pytest.raises(SAEError, match="out of range"):
        MLXBackend().load(ModelSpec(str(tiny_fixture.model_dir)), sae, 9, top_k=K)
    with pytest.raises(BackendError, match="dtype"):
        MLXBackend().load(ModelSpec(str(tiny_fixture.model_dir), dtype="int3"), sae, 0, top_k=K)
    other = tmp_path / "llama"
    shutil.copytree(tiny_fixture.model_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(BackendError, match="unsupported model_type 'llama': the mlx backend runs Gemma-2 .*Gemma-3"):
        MLXBackend().load(ModelSpec(str(other)), sae, 0, top_k=K)
    with pytest.raises(BackendError, match="SAE dtype"):
        MLXBackend().load(ModelSpec(str(tiny_fixture.model_dir)), sae, 0, top_k=K, sae_dtype="int8")
    with pytest.raises(BackendError, match="not loaded"):
        list(generate(MLXBackend(), [1, 2], GenerationParams(max_tokens=2)))


def test_bfloat16_model(tiny_fixture, sae, prompt):
    backend = MLXBackend()
    info = backend.load(ModelSpec(str(tiny_fixture.model_dir), dtype="bfloat16"), sae, tiny_fixture.sae_layer, top_k=K)
    assert info.dtype == "bfloat16"
    steps = list(generate(backend, prompt, GenerationParams(max_tokens=8)))
    assert len(steps) == 8 and np.mean([s.l0 for s in steps]) > 5


def test_one_async_eval_per_token_and_no_other_eval(loaded, prompt, monkeypatch):
    """The loop's only host synchronisation is reading each token's record, queued one step ahead."""
    backend, _ = loaded
    calls = {"async_eval": 0, "eval": 0}
    real_async, real_eval = mx.async_eval, mx.eval

    def counting(name, fn):
        def wrapped(*args):
            calls[name] += 1
            return fn(*args)

        return wrapped

    monkeypatch.setattr(mx, "async_eval", counting("async_eval", real_async))
    monkeypatch.setattr(mx, "eval", counting("eval", real_eval))
    gen = generate(backend, prompt, GenerationParams(max_tokens=12))
    first = next(gen)
    assert calls["async_eval"] == 2  # token 0 from the prefill, and token 1 queued before token 0 is read
    rest = list(gen)
    assert 1 + len(rest) == 12
    assert calls == {"async_eval": 12, "eval": 0}
    assert first.feature_ids.size > 0


def test_generates_on_another_thread(loaded, prompt):
    """The server runs generation on its own thread."""
    import threading

    backend, _ = loaded
    params = GenerationParams(max_tokens=16, prompt_features=True)
    here = [(s.token_id, s.feature_ids.tolist()) for s in generate(backend, prompt, params)]
    there: list = []

    def work():
        there.extend((s.token_id, s.feature_ids.tolist()) for s in generate(backend, prompt, params))

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=60)
    assert there == here
