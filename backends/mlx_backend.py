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
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np

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
        from mlx_lm.utils import _download, load_model, load_tokenizer

        from backends.mlx_gemma2 import model_classes
        from backends.mlx_sae import MLXSAE

        if model.dtype is not None and model.dtype not in _MODEL_DTYPES:
            raise BackendError(f"unknown dtype {model.dtype!r}; choose one of {', '.join(_MODEL_DTYPES)}")
        try:
            path = _download(model.name_or_path, revision=model.revision)
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
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        key = mx.random.key(seed)
        cache = model.make_cache()

        def step(tokens: mx.array, key: mx.array, keep_all: bool = False):
            """Graph for one forward over ``tokens`` (1, L): the packed record of the token it samples."""
            out = model(tokens, cache, capture_layer=layer, last_only=True)
            logits, hidden = out if capture else (out, None)
            token = _sample(logits[:, -1, :], params.temperature, params.top_p, key)
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
            out = model(ids[:, :chunk], cache, capture_layer=layer if want_prompt else None, last_only=True)
            if want_prompt:
                kept.append(out[1][0])
            mx.eval([c.state for c in cache] + kept)
            ids = ids[:, chunk:]
        key, sub = mx.random.split(key)
        token, record, last_hidden = step(ids, sub, keep_all=want_prompt)
        mx.async_eval(record)
        if want_prompt:
            packed = np.array(sae.topk(mx.concatenate(kept + [last_hidden], axis=0)))  # one batched encode
            for j, tid in enumerate(prompt_ids):
                yield _step(tid, packed[j], sae.k, position=j, prompt=True)

        n = len(prompt_ids)
        for i in range(params.max_tokens):
            last = i + 1 == params.max_tokens
            if not last:  # queue token i+1 before waiting on token i
                key, sub = mx.random.split(key)
                next_token, next_record, _ = step(token[None], sub)
                mx.async_eval(next_record)
            host = np.array(record)
            tid = int(host[0])
            finish = "stop" if tid in params.eos_token_ids else ("length" if last else None)
            yield _step(tid, host[1:], sae.k, position=n + i - 1, finish=finish, capture=capture)
            if finish is not None:
                return
            token, record = next_token, next_record


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


def _step(tid: int, rec: np.ndarray, k: int, *, position: int, prompt: bool = False, finish=None, capture=True) -> Step:
    if not capture:
        empty = np.zeros(0, dtype=np.int64)
        return Step(int(tid), empty, empty.astype(np.float32), 0, position, prompt, finish)
    l0 = int(rec[0])
    ids = rec[1 : 1 + k].astype(np.int64)
    vals = rec[1 + k : 1 + 2 * k].astype(np.float32)
    keep = vals > 0  # fewer than k features may fire
    return Step(int(tid), ids[keep], vals[keep], l0, position, prompt, finish)


def _eos_ids(config: dict, path: Path, tokenizer, wrapper) -> list[int]:
    """The model's EOS ids (config, generation_config.json, tokenizer) plus ``<end_of_turn>`` if it exists."""
    out: set[int] = set()
    sources = [config.get("eos_token_id")]
    gen_cfg = Path(path) / "generation_config.json"
    if gen_cfg.is_file():
        try:
            sources.append(json.loads(gen_cfg.read_text()).get("eos_token_id"))
        except (OSError, ValueError):
            pass
    sources.append(sorted(getattr(wrapper, "eos_token_ids", None) or ()))
    for e in sources:
        if isinstance(e, int):
            out.add(e)
        elif e:
            out.update(int(x) for x in e)
    if tokenizer.eos_token_id is not None:
        out.add(int(tokenizer.eos_token_id))
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if isinstance(eot, int) and eot != tokenizer.unk_token_id:
        out.add(eot)
    return sorted(out)


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
