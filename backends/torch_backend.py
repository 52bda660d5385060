"""The torch backend (CUDA and CPU): Gemma-2 via transformers, block-N capture, SAE top-k on the device.

Per token: one forward (a hook copies the last position of block N's output into a preallocated buffer),
sampling and SAE encode + filter + top-k on the device, and one small host copy of a packed record
([token, l0, k ids, k values]). The next forward is queued before that copy is waited on, so on CUDA the
host work for token t overlaps the device work for token t+1.
"""

from __future__ import annotations

import os
from typing import ClassVar, Iterator

import torch

from backends.records import eos_ids, unpack_step
from backends.torch_sae import SAE_DTYPES, TorchSAE
from backends.torch_sampling import sample
from neuroscope.loading import model_load_error
from neuroscope.protocol import (
    BackendError,
    FeatureFilter,
    GenerationParams,
    ModelInfo,
    ModelSpec,
    SAEInputNorm,
    Step,
)
from neuroscope.sae import SAEWeights

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _TorchBackend:
    name: ClassVar[str] = "torch"
    device_type: ClassVar[str] = "cpu"
    default_dtype: ClassVar[str] = "float32"

    def __init__(self) -> None:
        self.model = None
        self.sae: TorchSAE | None = None
        self.layer = -1
        self.capture = True  # False: plain decoding, no residual capture and no SAE (benchmarks' baseline)
        self._hook = None
        self._buf: torch.Tensor | None = None
        self._all: torch.Tensor | None = None
        self._want_all = False

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
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        dtype_name = model.dtype or self.default_dtype
        if dtype_name not in _DTYPES:
            raise BackendError(f"unknown dtype {dtype_name!r}; choose one of {', '.join(_DTYPES)}")
        if sae_dtype not in SAE_DTYPES:
            raise BackendError(f"unknown SAE dtype {sae_dtype!r}; choose one of {', '.join(SAE_DTYPES)}")
        device = torch.device(self.device_type)
        try:
            hub = {"revision": model.revision, "local_files_only": model.offline}
            tokenizer = AutoTokenizer.from_pretrained(model.name_or_path, **hub)
            lm = AutoModelForCausalLM.from_pretrained(
                model.name_or_path,
                **hub,
                dtype=_DTYPES[dtype_name],
                attn_implementation="eager",  # Gemma-2's attention soft-capping needs it
            )
        except (OSError, ValueError, EnvironmentError) as exc:
            raise model_load_error(model.name_or_path, exc) from exc
        lm.to(device).eval()
        cfg = lm.config
        layers = lm.model.layers
        sae.check_model(d_model=cfg.hidden_size, n_layers=len(layers), layer=layer)
        self.model, self.layer, self.device = lm, layer, device
        self.sae = TorchSAE(sae, device, top_k=top_k, input_norm=sae_input_norm, dtype=sae_dtype)
        self._buf = torch.zeros(1, cfg.hidden_size, dtype=lm.dtype, device=device)
        self._hook = layers[layer].register_forward_hook(self._capture)
        if getattr(tokenizer, "pad_token_id", None) is None:
            tokenizer.pad_token = tokenizer.eos_token
        return ModelInfo(
            model_id=model.name_or_path,
            tokenizer=tokenizer,
            n_layers=len(layers),
            d_model=cfg.hidden_size,
            vocab_size=cfg.vocab_size,
            context_length=int(getattr(cfg, "max_position_embeddings", 8192)),
            device=self.describe_device(),
            dtype=dtype_name,
            extra={"eos_token_ids": _eos_ids(lm, tokenizer), "sae_dtype": sae_dtype},
        )

    def describe_device(self) -> str:
        return "cpu"

    def set_feature_filter(self, flt: FeatureFilter) -> None:
        assert self.sae is not None, "load() first"
        self.sae.set_filter(flt)

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.model = None
        self.sae = None

    # ------------------------------------------------------------------------------------------- capture
    def _capture(self, module, args, output) -> None:
        hidden = output[0] if isinstance(output, tuple) else output  # (1, seq, d_model)
        if not self.capture:
            return
        self._buf.copy_(hidden[:, -1, :])
        if self._want_all:
            self._all = hidden[0].detach()

    # ------------------------------------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], params: GenerationParams) -> Iterator[Step]:
        if self.model is None or self.sae is None:
            raise BackendError("backend is not loaded")
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        if params.max_tokens < 1:
            return
        model, sae, device = self.model, self.sae, self.device
        gen = torch.Generator(device=device)
        gen.manual_seed(params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        eos = params.eos_token_ids
        capture = self.capture

        ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        self._want_all = params.prompt_features and capture
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        self._want_all = False
        cache = out.past_key_values
        token = sample(out.logits[:, -1, :], params.temperature, params.top_p, gen)
        if self._all is not None:
            packed_prompt = sae.topk(self._all).cpu().numpy()
            self._all = None
            for j, tid in enumerate(prompt_ids):
                yield unpack_step(tid, packed_prompt[j], sae.k, position=j, prompt=True)
        pending = self._pack(token, capture)

        n = len(prompt_ids)
        for i in range(params.max_tokens):
            last = i + 1 == params.max_tokens
            # queue the next forward before waiting on this token's record (overlaps on CUDA)
            nxt_out = None if last else model(input_ids=token.view(1, 1), past_key_values=cache, use_cache=True, logits_to_keep=1)
            host = pending.cpu().numpy()
            tid = int(host[0])
            if tid in eos:
                yield unpack_step(tid, host[1:], sae.k, position=n + i - 1, finish="stop", capture=capture)
                return
            if last:
                yield unpack_step(tid, host[1:], sae.k, position=n + i - 1, finish="length", capture=capture)
                return
            token = sample(nxt_out.logits[:, -1, :], params.temperature, params.top_p, gen)
            cache = nxt_out.past_key_values
            pending = self._pack(token, capture)
            yield unpack_step(tid, host[1:], sae.k, position=n + i - 1, capture=capture)

    def _pack(self, token: torch.Tensor, capture: bool) -> torch.Tensor:
        if not capture:
            return token.float().view(1)
        return torch.cat([token.float().view(1), self.sae.topk(self._buf)[0]])


def _eos_ids(model, tokenizer) -> list[int]:
    gen = getattr(model, "generation_config", None)
    return eos_ids([getattr(gen, "eos_token_id", None), getattr(model.config, "eos_token_id", None)], tokenizer)


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
