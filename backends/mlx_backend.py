"""The MLX backend (Apple silicon via Metal; CPU or CUDA builds of MLX on Linux).

Per token the graph is: one decode step of the faithful Gemma-2 (``backends/mlx_gemma2.py``) that also
returns block N's output, sampling, and SAE encode + filter + top-k (``backends/mlx_sae.py``), packed into
one small array ``[token, l0, k ids, k values]``. Nothing is evaluated while it is built: one
``mx.async_eval`` per token starts the work, and, as in mlx-lm's ``generate_step``, the graph for token t+1
is built and queued before the host waits on token t's record.

mlx is imported lazily so that this module (and ``is_available`` / ``install_hint``) imports without it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

from backends.records import eos_ids, unpack_step
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

_MODEL_DTYPES = ("float32", "bfloat16", "float16")


class MLXBackend:
    name: ClassVar[str] = "mlx"

    def __init__(self) -> None:
        self.model = None
        self.sae = None
        self.layer = -1
        self.capture = True  # False: plain decoding, no residual capture and no SAE (benchmarks' baseline)
        self.prefill_step = 2048  # prompt tokens per prefill chunk (bounds attention memory on long prompts)

    # ------------------------------------------------------------------------------------------- discovery
    @classmethod
    def is_available(cls) -> bool:
        try:
            import mlx.core  # noqa: F401
            import mlx_lm  # noqa: F401
        except Exception:  # ImportError, or a wheel whose native library fails to load
            return False
        return True

    @classmethod
    def uses_metal(cls) -> bool:
        try:
            import mlx.core as mx

            return bool(mx.metal.is_available())
        except Exception:
            return False

    @classmethod
    def install_hint(cls) -> str:
        return "pip install -e '.[mlx]' (on Linux also 'mlx[cpu]', 'mlx[cuda12]' or 'mlx[cuda13]')"

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
        import mlx.core as mx
        from mlx_lm.utils import load_model, load_tokenizer

        from backends.mlx_gemma2 import model_classes
        from backends.mlx_sae import MLXSAE, SAE_DTYPES

        if model.dtype is not None and model.dtype not in _MODEL_DTYPES:
            raise BackendError(f"unknown dtype {model.dtype!r}; choose one of {', '.join(_MODEL_DTYPES)}")
        if sae_dtype not in SAE_DTYPES:
            raise BackendError(f"unknown SAE dtype {sae_dtype!r}; choose one of {', '.join(SAE_DTYPES)}")
        try:
            path = _local_path(model)
            lm, config = load_model(path, get_model_classes=model_classes)
            wrapper = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
        except (OSError, ValueError, KeyError) as exc:
            raise model_load_error(model.name_or_path, exc) from exc
        if model.dtype is not None:
            lm.set_dtype(getattr(mx, model.dtype))
            mx.eval(lm.parameters())
        args = lm.args
        sae.check_model(d_model=args.hidden_size, n_layers=args.num_hidden_layers, layer=layer)
        self.sae = MLXSAE(sae, top_k=top_k, input_norm=sae_input_norm, dtype=sae_dtype)
        self.model, self.layer = lm, layer
        tokenizer = wrapper._tokenizer  # the transformers tokenizer inside mlx-lm's wrapper
        if getattr(tokenizer, "pad_token_id", None) is None:
            tokenizer.pad_token = tokenizer.eos_token
        return ModelInfo(
            model_id=model.name_or_path,
            tokenizer=tokenizer,
            n_layers=args.num_hidden_layers,
            d_model=args.hidden_size,
            vocab_size=args.vocab_size,
            context_length=int(args.max_position_embeddings),
            device=_describe_device(),
            dtype=_describe_dtype(lm, config),
            extra={
                "eos_token_ids": _eos_ids(config, path, tokenizer, wrapper),
                "sae_dtype": sae_dtype,
                "sliding_window": args.sliding_window,
            },
        )

    def set_feature_filter(self, flt: FeatureFilter) -> None:
        if self.sae is None:
            raise BackendError("backend is not loaded")
        self.sae.set_filter(flt)

    def close(self) -> None:
        self.model = None
        self.sae = None

    # ------------------------------------------------------------------------------------------- generation
    def generate(self, prompt_ids: list[int], params: GenerationParams) -> Iterator[Step]:
        import mlx.core as mx

        if self.model is None or self.sae is None:
            raise BackendError("backend is not loaded")
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        if params.max_tokens < 1:
            return
        model, sae, capture = self.model, self.sae, self.capture
        layer = self.layer if capture else None
        stream = _generation_stream()
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        key = mx.random.key(seed & 0xFFFF_FFFF_FFFF_FFFF)  # MLX keys take an unsigned 64-bit seed
        cache = model.make_cache()

        def step(tokens: mx.array, keep_all: bool = False):
            """Graph for one forward over ``tokens`` (1, L): the token it samples and its packed record."""
            nonlocal key
            with mx.stream(stream):
                sub = None
                if params.temperature > 0:  # greedy decoding needs no randomness (and no key split per token)
                    key, sub = mx.random.split(key)
                out = model(tokens, cache, capture_layer=layer, last_only=True)
                logits, hidden = out if capture else (out, None)
                token = _sample(logits[:, -1, :], params.temperature, params.top_p, sub)
                if not capture:
                    return token, token.astype(mx.float32), None
                record = mx.concatenate([token.astype(mx.float32), sae.topk(hidden[:, -1, :])[0]])
                return token, record, (hidden[0] if keep_all else None)

        # prefill: all chunks but the last only fill the caches (and keep block N's output for prompt features)
        want_prompt = params.prompt_features and capture
        ids = mx.array(prompt_ids, dtype=mx.int32)[None]
        kept: list[mx.array] = []
        chunk = max(1, int(self.prefill_step))
        while ids.shape[1] > chunk:
            with mx.stream(stream):
                out = model(ids[:, :chunk], cache, capture_layer=layer if want_prompt else None, last_only=True)
                if want_prompt:
                    kept.append(out[1][0])
                mx.eval([c.state for c in cache] + kept)
            ids = ids[:, chunk:]
        token, record, last_hidden = step(ids, keep_all=want_prompt)
        mx.async_eval(record)
        if want_prompt:
            with mx.stream(stream):  # one batched encode of every prompt position
                packed = np.array(sae.topk(mx.concatenate(kept + [last_hidden], axis=0)))
            for j, tid in enumerate(prompt_ids):
                yield unpack_step(tid, packed[j], sae.k, position=j, prompt=True)

        n = len(prompt_ids)
        for i in range(params.max_tokens):
            last = i + 1 == params.max_tokens
            if not last:  # queue token i+1 before waiting on token i: the one async_eval of this token
                next_token, next_record, _ = step(token[None])
                mx.async_eval(next_record)
            host = np.array(record)
            tid = int(host[0])
            finish = "stop" if tid in params.eos_token_ids else ("length" if last else None)
            yield unpack_step(tid, host[1:], sae.k, position=n + i - 1, finish=finish, capture=capture)
            if finish is not None:
                return
            token, record = next_token, next_record


def _local_path(model: ModelSpec) -> Path:
    """A local directory as is; a hub id through huggingface_hub's cache (never the network when offline)."""
    path = Path(model.name_or_path).expanduser()
    if path.exists():
        return path
    from huggingface_hub import snapshot_download
    from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

    return Path(
        snapshot_download(
            model.name_or_path,
            revision=model.revision,
            allow_patterns=DEFAULT_ALLOW_PATTERNS,
            local_files_only=model.offline,
        )
    )


_STREAM = None


def _generation_stream():
    """A stream for generation, thread-local like mlx-lm's: the server runs generation on its own thread."""
    global _STREAM
    if _STREAM is None:
        import mlx.core as mx

        make = getattr(mx, "new_thread_local_stream", mx.new_stream)
        _STREAM = make(mx.default_device())
    return _STREAM


def _sample(logits, temperature: float, top_p: float, key):
    """(1, vocab) logits -> (1,) token ids: greedy at temperature 0, else temperature and top-p (nucleus)."""
    import mlx.core as mx

    if temperature <= 0.0:
        return mx.argmax(logits, axis=-1)
    logits = logits.astype(mx.float32) / temperature
    if top_p >= 1.0:
        return mx.random.categorical(logits, axis=-1, key=key)
    probs = mx.softmax(logits, axis=-1)
    order = mx.argsort(-probs, axis=-1)
    sorted_p = mx.take_along_axis(probs, order, axis=-1)
    cum = mx.cumsum(sorted_p, axis=-1)
    # keep the smallest prefix whose mass reaches top_p (always keeps the first token)
    sorted_p = mx.where(cum - sorted_p >= top_p, mx.zeros_like(sorted_p), sorted_p)
    choice = mx.random.categorical(mx.log(sorted_p), axis=-1, key=key)
    return mx.take_along_axis(order, choice[:, None], axis=-1)[:, 0]


def _eos_ids(config: dict, path: Path, tokenizer, wrapper) -> list[int]:
    """EOS ids from the config, generation_config.json, mlx-lm's wrapper and the tokenizer."""
    sources = [config.get("eos_token_id"), sorted(getattr(wrapper, "eos_token_ids", None) or ())]
    gen_cfg = Path(path) / "generation_config.json"
    if gen_cfg.is_file():
        try:
            sources.append(json.loads(gen_cfg.read_text()).get("eos_token_id"))
        except (OSError, ValueError):
            pass
    return eos_ids(sources, tokenizer)


def _describe_device() -> str:
    import mlx.core as mx

    if mx.default_device().type == mx.cpu:
        return "cpu (mlx)"
    try:
        if mx.metal.is_available():
            name = mx.metal.device_info().get("device_name", "")
            return f"metal ({name})" if name else "metal"
    except Exception:
        pass
    return "gpu (mlx)"


def _describe_dtype(lm, config: dict) -> str:
    """The activation dtype, with the quantization when the checkpoint is quantized (e.g. "float16, 4-bit")."""
    dtype = str(lm.model.norm.weight.dtype).removeprefix("mlx.core.")
    q = config.get("quantization")
    return f"{dtype}, {q['bits']}-bit" if isinstance(q, dict) and "bits" in q else dtype
