"""The torch backend (CUDA and CPU): our own Gemma-2 (``backends/torch_gemma2.py``), SAE top-k on the device.

Per token one fixed-shape step: the forward at a tensor position into a static KV cache (block N's output is
returned by the model, no hooks; a steered request's steering rewrites it in the same forward), sampling, and
SAE encode + filter + top-k, packed into one small record ``[token, l0, filtered, k ids, k values]``. The
decode loop (:mod:`neuroscope.decode`) queues the next step before it copies a record to the host, so on CUDA
the host work for token t overlaps the device work for token t+1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from backends.torch_gemma2 import Gemma2, KVCache, cache_size
from backends.torch_sae import SAE_DTYPES, TorchSAE, TorchSteer
from backends.torch_sampling import LogitProcessor, sample
from neuroscope import checkpoint
from neuroscope.loading import model_load_error
from neuroscope.protocol import (
    BackendError,
    CorpusBatch,
    CorpusResult,
    FeatureFilter,
    GenerationParams,
    ModelInfo,
    ModelSpec,
    Prefilled,
    SAEInputNorm,
)
from neuroscope.sae import SAEWeights

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class _Request:
    """One generation's device state: its own cache, last token, position and RNG (nothing outlives it)."""

    cache: KVCache
    token: torch.Tensor  # (1,) the last sampled token
    position: torch.Tensor  # (1,) where that token goes
    generator: torch.Generator
    temperature: float
    top_p: float
    steer: TorchSteer | None = None  # this request's steering (device tensors), applied in every decode step
    logits: LogitProcessor | None = None  # bias / penalties / logprobs; None: the plain graph


class _TorchBackend:
    name: ClassVar[str] = "torch"
    device_type: ClassVar[str] = "cpu"
    default_dtype: ClassVar[str] = "float32"

    def __init__(self) -> None:
        self.model: Gemma2 | None = None
        self.sae: TorchSAE | None = None
        self.layer = -1
        self.capture = True  # False: plain decoding, no residual capture and no SAE (benchmarks' baseline)
        self.prefill_chunk = 2048  # prompt tokens per prefill forward (bounds attention memory on long prompts)

    @classmethod
    def install_hint(cls) -> str:
        return "pip install torch (the CPU wheel first on CPU-only Linux) and pip install -e '.[torch]'"

    # ------------------------------------------------------------------------------------------- loading
    def load(
        self,
        model: ModelSpec,
        sae: SAEWeights,
        layer: int,
        *,
        top_k: int,
        sae_input_norm: SAEInputNorm = "none",
        sae_dtype: str = "float32",
    ) -> ModelInfo:
        dtype_name = model.dtype or self.default_dtype
        if dtype_name not in _DTYPES:
            raise BackendError(f"unknown dtype {dtype_name!r}; choose one of {', '.join(_DTYPES)}")
        if sae_dtype not in SAE_DTYPES:
            raise BackendError(f"unknown SAE dtype {sae_dtype!r}; choose one of {', '.join(SAE_DTYPES)}")
        device = torch.device(self.device_type)
        path = checkpoint.local_dir(model)
        config = checkpoint.read_config(path)
        try:
            lm = Gemma2.from_checkpoint(path, config, _DTYPES[dtype_name], device)
        except (OSError, ValueError, KeyError) as exc:
            raise model_load_error(model.name_or_path, exc) from exc
        tokenizer = checkpoint.load_tokenizer(path)
        cfg = lm.cfg
        sae.check_model(d_model=cfg.hidden_size, n_layers=cfg.num_hidden_layers, layer=layer)
        self.model, self.layer, self.device = lm, layer, device
        self.sae = TorchSAE(sae, device, top_k=top_k, input_norm=sae_input_norm, dtype=sae_dtype)
        return ModelInfo(
            model_id=model.name_or_path,
            tokenizer=tokenizer,
            n_layers=cfg.num_hidden_layers,
            d_model=cfg.hidden_size,
            vocab_size=cfg.vocab_size,
            context_length=cfg.max_position_embeddings,
            device=self.describe_device(),
            dtype=dtype_name,
            eos_token_ids=checkpoint.eos_token_ids(path, config, tokenizer),
            sae_dtype=sae_dtype,
            sliding_window=cfg.sliding_window,
        )

    def describe_device(self) -> str:
        return "cpu"

    def set_feature_filter(self, flt: FeatureFilter) -> None:
        if self.sae is None:
            raise BackendError("backend is not loaded")
        self.sae.set_filter(flt)

    def close(self) -> None:
        self.model = None
        self.sae = None

    # ------------------------------------------------------------------------------------------- the pieces
    @torch.inference_mode()
    def prefill(self, prompt_ids: list[int], params: GenerationParams) -> Prefilled:
        if self.model is None or self.sae is None:
            raise BackendError("backend is not loaded")
        model, device, capture = self.model, self.device, self.capture
        gen = torch.Generator(device=device)
        gen.manual_seed(params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        n = len(prompt_ids)
        steer = self.sae.steerer(params.steering, self.layer) if params.steering is not None else None
        cache = model.new_cache(cache_size(n + params.max_tokens))
        want_prompt = params.prompt_features and capture
        logits, hidden = model.prefill(
            torch.tensor(prompt_ids, dtype=torch.long, device=device), cache,
            capture=self.layer if capture else None, all_positions=want_prompt, chunk=self.prefill_chunk,
            steer=steer if steer is not None and steer.positions == "all" else None,
        )
        proc = LogitProcessor(params, logits.shape[-1], device) if params.processes_logits else None
        token, tail = _draw(logits, params.temperature, params.top_p, gen, proc)
        state = _Request(cache, token, torch.tensor([n], device=device), gen, params.temperature, params.top_p, steer,
                         proc)
        record = self._pack(token, hidden[-1:] if capture else None, tail)
        return Prefilled(state, record, self.sae.topk(hidden) if want_prompt else None)

    @torch.inference_mode()
    def decode_step(self, state: _Request) -> torch.Tensor:
        logits, hidden = self.model.step(
            state.token, state.position, state.cache, capture=self.layer if self.capture else None, steer=state.steer
        )
        state.position = state.position + 1
        state.token, tail = _draw(logits, state.temperature, state.top_p, state.generator, state.logits)
        return self._pack(state.token, hidden, tail)

    def to_host(self, record: torch.Tensor) -> np.ndarray:
        return record.cpu().numpy()

    def _pack(self, token: torch.Tensor, hidden: torch.Tensor | None, tail: torch.Tensor | None = None) -> torch.Tensor:
        parts = [token.float().view(1)]
        if hidden is not None:
            parts.append(self.sae.topk(hidden)[0])
        if tail is not None:
            parts.append(tail)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def corpus_pass(self, batch: CorpusBatch, *, records: bool = False) -> CorpusResult:
        """Prefill only: block N's output of a padded batch, the SAE encode, statistics reduced on the device."""
        if self.model is None or self.sae is None:
            raise BackendError("backend is not loaded")
        from backends.torch_corpus import corpus_pass

        return corpus_pass(self.model, self.sae, self.layer, batch, self.device, records=records)


def _draw(logits, temperature, top_p, generator, proc: LogitProcessor | None):
    """Sample from the (processed) logits; returns the token and its record's logprob tail (or None)."""
    if proc is None:
        return sample(logits, temperature, top_p, generator), None
    logits = proc.process(logits)
    token = sample(logits, temperature, top_p, generator)
    return token, proc.after(logits, token)


class TorchCPUBackend(_TorchBackend):
    name: ClassVar[str] = "torch-cpu"
    device_type: ClassVar[str] = "cpu"
    default_dtype: ClassVar[str] = "float32"

    @classmethod
    def is_available(cls) -> bool:
        return True


class TorchCUDABackend(_TorchBackend):
    name: ClassVar[str] = "torch-cuda"
    device_type: ClassVar[str] = "cuda"
    default_dtype: ClassVar[str] = "bfloat16"

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available()

    @classmethod
    def install_hint(cls) -> str:
        return "needs an NVIDIA GPU and a CUDA build of torch: pip install torch then pip install -e '.[torch]'"

    def describe_device(self) -> str:
        return f"cuda ({torch.cuda.get_device_name(0)})"
