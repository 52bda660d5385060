"""The torch backend in bfloat16 (CUDA's default dtype), run here on the CPU: the residual is captured in bf16
and encoded in float32, and the features still match the numpy reference on that same bf16 residual."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backends.torch_backend import TorchCPUBackend, TorchCUDABackend  # noqa: E402
from neuroscope.core.decode import generate  # noqa: E402
from neuroscope.core.protocol import BackendError, GenerationParams, ModelSpec  # noqa: E402
from neuroscope.core.sae import encode_reference, load_npz  # noqa: E402
from tests.support.reference import hf_model  # noqa: E402


def test_bfloat16_model_float32_sae(tiny_fixture):
    sae = load_npz(tiny_fixture.sae_path)
    backend = TorchCPUBackend()
    info = backend.load(ModelSpec(str(tiny_fixture.model_dir), dtype="bfloat16"), sae, tiny_fixture.sae_layer, top_k=8)
    assert info.dtype == "bfloat16"
    tok = info.tokenizer
    ids = tok.encode(
        tok.apply_chat_template([{"role": "user", "content": "Hello there"}], tokenize=False, add_generation_prompt=True),
        add_special_tokens=False,
    )
    (step,) = generate(backend, ids, GenerationParams(max_tokens=1, prompt_features=False))
    backend.close()
    ref_model = hf_model(str(tiny_fixture.model_dir), "bfloat16")
    with torch.inference_mode():
        hidden = ref_model(torch.tensor([ids]), output_hidden_states=True).hidden_states[tiny_fixture.sae_layer + 1]
    acts = encode_reference(sae, hidden[0, -1].float().numpy())
    np.testing.assert_allclose(step.feature_values, acts[step.feature_ids], rtol=1e-4, atol=1e-4)
    assert step.l0 == int((acts > 0).sum())


def test_steering_a_bfloat16_model(tiny_fixture):
    """bf16 residual: the delta is computed in float32 and the steered residual rounded back to bf16, as
    transformers' bf16 Gemma-2 does with the same rule applied by a hook."""
    from neuroscope.core.protocol import SteerFeature, Steering
    from tests.support.reference import steered_greedy

    sae = load_npz(tiny_fixture.sae_path)
    backend = TorchCPUBackend()
    info = backend.load(ModelSpec(str(tiny_fixture.model_dir), dtype="bfloat16"), sae, tiny_fixture.sae_layer, top_k=8)
    tok = info.tokenizer
    ids = tok.encode(
        tok.apply_chat_template([{"role": "user", "content": "Hello there"}], tokenize=False, add_generation_prompt=True),
        add_special_tokens=False,
    )
    spec = Steering((SteerFeature(193, "add", 8.0), SteerFeature(2, "clamp", 3.0)))
    try:
        steps = list(generate(backend, ids, GenerationParams(max_tokens=1, prompt_features=True, steering=spec)))
        plain = list(generate(backend, ids, GenerationParams(max_tokens=1, prompt_features=True)))
    finally:
        backend.close()
    _, resid = steered_greedy(tiny_fixture.model_dir, sae, tiny_fixture.sae_layer, ids,
                              [(193, "add", 8.0), (2, "clamp", 3.0)], "all", 1, dtype="bfloat16")
    acts = encode_reference(sae, resid)
    for step in steps:
        # bf16 rounding of the residual: a feature within a hair of its threshold may flip, values agree to ~1 %
        np.testing.assert_allclose(step.feature_values, acts[step.position][step.feature_ids], rtol=2e-2, atol=5e-2)
    shows = lambda run: sum(193 in s.feature_ids for s in run)  # noqa: E731
    assert shows(steps) >= len(steps) * 3 // 4 and shows(steps) > 2 * shows(plain)


def test_unknown_dtype_is_refused(tiny_fixture):
    with pytest.raises(BackendError, match="unknown dtype 'float8'"):
        TorchCPUBackend().load(ModelSpec(str(tiny_fixture.model_dir), dtype="float8"), load_npz(tiny_fixture.sae_path), 2, top_k=4)


def test_cuda_backend_loads_bfloat16_unless_told_otherwise(tiny_fixture):
    """What torch-cuda does by default, run on the CPU: a model loaded without --dtype computes in bf16."""

    class CudaDefaultsOnCPU(TorchCUDABackend):
        device_type = "cpu"

        def describe_device(self) -> str:
            return "cpu"

    sae = load_npz(tiny_fixture.sae_path)
    backend = CudaDefaultsOnCPU()
    info = backend.load(ModelSpec(str(tiny_fixture.model_dir)), sae, tiny_fixture.sae_layer, top_k=4)
    assert info.dtype == "bfloat16" and backend.model.dtype == torch.bfloat16
    explicit = CudaDefaultsOnCPU().load(ModelSpec(str(tiny_fixture.model_dir), dtype="float32"), sae, 2, top_k=4)
    assert explicit.dtype == "float32"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_torch_cuda_without_a_gpu_is_refused_with_a_hint():
    from neuroscope.core import registry

    assert "torch-cuda" not in registry.available()
    with pytest.raises(BackendError, match="torch-cuda' is not available.*NVIDIA GPU"):
        registry.resolve("torch-cuda")


def _bf16(a: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).bfloat16().float().numpy()


def test_bfloat16_sae_is_a_bf16_matmul_summed_in_float32(tiny_fixture):
    from backends.torch_sae import TorchSAE

    sae = load_npz(tiny_fixture.sae_path)
    x = (np.random.default_rng(3).standard_normal((5, sae.d_model)) * 2.5).astype(np.float32)
    got = TorchSAE(sae, torch.device("cpu"), top_k=8, dtype="bfloat16").encode(torch.from_numpy(x)).numpy()
    pre = _bf16(_bf16(x) @ _bf16(sae.W_enc)) + _bf16(sae.b_enc)
    want = np.where(pre > sae.threshold, pre, 0.0)
    settled = np.abs(pre - sae.threshold) > 0.05
    np.testing.assert_allclose(got[settled], want[settled], rtol=8e-3, atol=1e-3)
    assert TorchSAE(sae, torch.device("cpu"), top_k=8, dtype="bfloat16").W_enc.dtype == torch.bfloat16
