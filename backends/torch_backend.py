"""The torch backend (CUDA and CPU): our own Gemma-2 and Gemma-3 (``backends/torch_gemma2.py``,
``backends/torch_gemma3.py``, chosen by the config's ``model_type``), SAE top-k on the device.

Per token one fixed-shape step (:func:`backends.torch_step.decode_step`): the forward at a tensor position into
a static KV cache (block N's output is returned by the model, no hooks; steering rewrites it in the same
forward), SAE encode + filter + top-k, logit processing and sampling, packed into one small record
``[token, l0, filtered, k ids, k values]``. The engine (``backend.engine``, set before ``load``) runs that step
eagerly or compiled (:mod:`backends.torch_compiled`); both run the same function, so they decode the same
tokens. The decode loop (:mod:`neuroscope.core.decode`) queues the next step before it copies a record to the host,
so on CUDA the host work for token t overlaps the device work for token t+1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Generator

import numpy as np
import torch

from backends.torch_batch import TorchBatch
from backends.torch_compiled import ENGINES, CompiledStep
from backends.torch_gemma2 import Gemma2, KVCache, cache_size
from backends.torch_gemma3 import MULTIMODAL_TYPE, TEXT_TYPE, Gemma3
from backends.torch_sae import SAE_DTYPES, TorchSAE
from backends.torch_sampling import MAX_LOGPROBS, tail_index
from backends.torch_step import NOTHING, Skips, StepInputs, decode_step, draw
from neuroscope.core import checkpoint
from neuroscope.core.loading import model_load_error
from neuroscope.core.protocol import (
    BackendError,
    CorpusBatch,
    CorpusResult,
    FeatureEffects,
    FeatureFilter,
    GenerationParams,
    ModelInfo,
    ModelSpec,
    Prefilled,
    SAEInputNorm,
)
from neuroscope.core.sae import SAEWeights

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_threads() -> int:
    """The torch CPU threads Neuroscope runs with (serve, steer, the benchmarks alike): torch's default, one per
    core, but never more than the CPUs this process may run on (a container or ``taskset`` limits those; more
    threads than CPUs make every parallel op wait on a thread that is not running)."""
    import os

    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), allowed))


# the model families and the config model_types that select them
FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Gemma 2", ("gemma2",)),
    ("Gemma 3", (TEXT_TYPE, MULTIMODAL_TYPE)),
)


def model_family(config: dict) -> type[Gemma2] | None:
    """The model class for a checkpoint's ``config.json``, by its ``model_type`` (None: not one we run)."""
    kind = config.get("model_type")
    if kind == "gemma2":
        return Gemma2
    if kind in (TEXT_TYPE, MULTIMODAL_TYPE):
        return Gemma3
    return None


@dataclass
class _Request:
    """One generation's device state: its cache and step inputs (its own under the eager engine, the compiled
    engine's static ones under ``owner``), and how to cut the logprob tail of its records."""

    cache: KVCache
    inputs: StepInputs
    logprobs: bool
    cut: torch.Tensor | None  # indices keeping the request's n logprobs of the MAX_LOGPROBS the step computes
    owner: object | None = None  # the compiled engine's ownership token (None: eager)
    skips: Skips = NOTHING  # the identities an eager step leaves out
    n: int = 0  # prompt tokens
    params: GenerationParams | None = None


class _TorchBackend:
    name: ClassVar[str] = "torch"
    device_type: ClassVar[str] = "cpu"
    default_dtype: ClassVar[str] = "float32"
    engines: ClassVar[tuple[str, ...]] = ENGINES
    default_engine: ClassVar[str] = "eager"  # what --engine auto picks (measured: see the README)

    def __init__(self) -> None:
        self.model: Gemma2 | None = None
        self.sae: TorchSAE | None = None
        self.layer = -1
        self.engine = self.default_engine  # "eager" or "compiled", read by load()
        self.compiled: CompiledStep | None = None
        self.capture = True  # False: plain decoding, no residual capture and no SAE (benchmarks' baseline)
        self.prefill_chunk = 2048  # prompt tokens per prefill forward (bounds attention memory on long prompts)
        self._effects = None  # the feature page's weights view, made on first use
        self.batch: TorchBatch | None = None  # the rows decoding together (open_batch)
        self.batch_compile_seconds: float | None = None  # the compiled engine's batch buckets, at open_batch

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
        if self.engine not in ENGINES:
            raise BackendError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        device = torch.device(self.device_type)
        if device.type == "cpu":
            torch.set_num_threads(cpu_threads())
        path = checkpoint.local_dir(model)
        config = checkpoint.read_config(path)
        family = model_family(config)
        if family is None:
            raise BackendError(f"cannot load model {model.name_or_path!r}: its model_type "
                               f"{config.get('model_type')!r} is not supported; the torch backend runs "
                               + ", ".join(f"{name} ({', '.join(types)})" for name, types in FAMILIES))
        try:
            lm = family.from_checkpoint(path, config, _DTYPES[dtype_name], device)
        except (OSError, ValueError, KeyError) as exc:
            raise model_load_error(model.name_or_path, exc) from exc
        tokenizer = checkpoint.load_tokenizer(path)
        cfg = lm.cfg
        sae.check_model(d_model=cfg.hidden_size, n_layers=cfg.num_hidden_layers, layer=layer)
        self.model, self.layer, self.device = lm, layer, device
        self._effects = None
        self.sae = TorchSAE(sae, device, top_k=top_k, input_norm=sae_input_norm, dtype=sae_dtype)
        self.compiled = CompiledStep(lm, self.sae, device) if self.engine == "compiled" else None
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
        self.compiled = None
        self._effects = None
        self.batch = None

    def feature_effects(self, index: int, *, neighbours: int = 10, logits: int = 10) -> FeatureEffects:
        """Neighbours and logit effects of one feature, on the device (:mod:`backends.torch_explore`)."""
        if self.model is None or self.sae is None:
            raise BackendError("backend is not loaded")
        if self._effects is None:
            from backends.torch_explore import Effects

            self._effects = Effects(self.sae.W_dec, self.model.model.embed_tokens.weight, self.model.model.norm.weight)
        return self._effects(index, neighbours=neighbours, logits=logits)

    def describe_engine(self) -> str:
        return f"compiled ({self.compiled.describe()})" if self.compiled is not None else "eager"

    def use_eager(self) -> None:
        """Drop the compiled step (it failed to build): the same step runs uncompiled from now on."""
        self.compiled = None
        self.engine = "eager"

    def warm_up(self, positions: int) -> float:
        """Compile the decode step for the cache bucket of requests of ``positions`` (prompt + max_tokens)
        before the first one (other buckets compile on first use); returns the seconds spent (0 under the
        eager engine)."""
        if self.compiled is None:
            return 0.0
        try:
            return self.compiled.warm_up(cache_size(positions), self.layer)
        except Exception as exc:  # inductor without a C++ compiler or Triton, an unsupported op, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"--engine compiled could not compile the decode step ({first}); "
                               "--engine eager runs the same step uncompiled") from exc

    # ------------------------------------------------------------------------------------------- the pieces
    def prefill(self, prompt_ids: list[int], params: GenerationParams) -> Prefilled:
        gen = self.prefill_steps(prompt_ids, params)
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value

    @torch.inference_mode()
    def prefill_steps(self, prompt_ids: list[int], params: GenerationParams, *,
                      joining: bool = False) -> Generator[None, None, Prefilled]:
        """:meth:`prefill` one ``prefill_chunk`` at a time (yields between chunks). ``joining``: for a request
        that joins the batch: a private cache of the prompt's length, copied into its row by :meth:`join`."""
        if self.model is None or self.sae is None:
            raise BackendError("backend is not loaded")
        model, device, capture = self.model, self.device, self.capture
        n = len(prompt_ids)
        steer = self.sae.steerer(params.steering, self.layer) if params.steering is not None else None
        size = n if joining else cache_size(n + params.max_tokens)
        owner = None
        if self.compiled is not None and not joining:
            cache, inputs, owner = self.compiled.take(size)
        else:
            cache, inputs = model.new_cache(size), StepInputs.allocate(self.sae, model.cfg.vocab_size)
        want_prompt = params.prompt_features and capture
        inputs.load(params, steer)
        logits, hidden = yield from model.prefill_chunks(
            torch.tensor(prompt_ids, dtype=torch.long, device=device), cache,
            capture=self.layer if capture else None, all_positions=want_prompt, chunk=self.prefill_chunk,
            steer=steer if steer is not None and steer.positions == "all" else None,
        )
        logprobs = params.logprobs is not None
        skips = NOTHING if self.compiled is not None and not joining else Skips.for_request(params)
        drawn = draw(logits, inputs, torch.tensor([n], device=device), logprobs, skips)
        inputs.token.copy_(drawn[0])
        inputs.position.fill_(n)
        parts = [drawn[0].float()]
        if capture:
            parts.append(self.sae.topk(hidden[-1:])[0])
        cut = None
        if logprobs:
            parts.append(drawn[1])
            width = sum(p.numel() for p in parts)
            cut = tail_index(width, min(params.logprobs, MAX_LOGPROBS), device)
        record = torch.cat(parts)
        state = _Request(cache, inputs, logprobs, cut, owner, skips, n, params)
        return Prefilled(state, _cut(record, cut), self.sae.topk(hidden) if want_prompt else None)

    # ------------------------------------------------------------------------------------------- batching
    def open_batch(self, max_batch: int, max_context: int) -> int | None:
        """Allocate the batch's KV cache (``max_batch`` rows x ``max_context`` positions) and step inputs; returns
        its bytes. Under the compiled engine the batched step is compiled too, one graph per batch bucket and
        KV-length bucket: every batch bucket at the shortest KV length here, longer lengths on first use."""
        if self.model is None or self.sae is None:
            raise BackendError("backend is not loaded")
        self.batch = TorchBatch(self.model, self.sae, max_batch, max_context, compiled=self.compiled)
        if self.compiled is not None:
            self.batch_compile_seconds = self.compiled.warm_up_batch(self.batch, min(max_context, cache_size(1)),
                                                                     self.layer)
        return self.batch.bytes

    def join(self, key: object, pre: Prefilled) -> None:
        st: _Request = pre.state
        self.batch.join(key, st.cache, st.inputs, st.n, st.params)

    def leave(self, key: object) -> None:
        self.batch.leave(key)

    def batch_step(self) -> tuple[torch.Tensor, list]:
        return self.batch.step(self.layer, self.capture)

    def batch_to_host(self, step: tuple[torch.Tensor, list]) -> list[tuple[object, np.ndarray]]:
        record, rows = step
        host = record.cpu().numpy()
        return [(r.key, rec) for r, rec in zip(rows, self.batch.split(host, rows, self.capture))]

    def reset_batch(self) -> None:
        if self.batch is not None:
            self.batch.clear()

    @torch.inference_mode()
    def decode_step(self, state: _Request) -> torch.Tensor:
        capture = self.capture
        if self.compiled is not None:
            self.compiled.check_owner(state.owner)
            record = self.compiled(state.cache, self.layer, capture, state.logprobs)
        else:
            record = decode_step(self.model, self.sae, state.inputs, state.cache, self.layer, capture, state.logprobs,
                                 state.skips)
        return _cut(record, state.cut)

    def to_host(self, record: torch.Tensor) -> np.ndarray:
        return record.cpu().numpy()

    def corpus_pass(self, batch: CorpusBatch, *, records: bool = False) -> CorpusResult:
        """Prefill only: block N's output of a padded batch, the SAE encode, statistics reduced on the device."""
        if self.model is None or self.sae is None:
            raise BackendError("backend is not loaded")
        from backends.torch_corpus import corpus_pass

        return corpus_pass(self.model, self.sae, self.layer, batch, self.device, records=records)


def _cut(record: torch.Tensor, cut: torch.Tensor | None) -> torch.Tensor:
    """A record with the request's n logprobs of the step's MAX_LOGPROBS (unchanged without logprobs)."""
    return record if cut is None else record.index_select(0, cut)


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
    default_engine: ClassVar[str] = "compiled"  # CUDA graphs: one launch per token instead of hundreds

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available()

    @classmethod
    def install_hint(cls) -> str:
        return "needs an NVIDIA GPU and a CUDA build of torch: pip install torch then pip install -e '.[torch]'"

    def describe_device(self) -> str:
        return f"cuda ({torch.cuda.get_device_name(0)})"
