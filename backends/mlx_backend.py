"""The MLX backend (Apple silicon via Metal; CPU or CUDA builds of MLX on Linux).

Per token the graph is: one decode step of the faithful Gemma-2 (``backends/mlx_gemma2.py``) that also
returns block N's output, sampling, and SAE encode + filter + top-k (``backends/mlx_sae.py``), packed into
one small array ``[token, l0, filtered, k ids, k values]``. Nothing is evaluated while it is built: one
``mx.async_eval`` per token starts the work, and, as in mlx-lm's ``generate_step``, the graph for token t+1
is built and queued before the host waits on token t's record.

mlx is imported lazily so that this module (and ``is_available`` / ``install_hint``) imports without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Generator

import numpy as np

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

_MODEL_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class _Request:
    """One generation's state: its own caches, last token and PRNG key (nothing outlives it)."""

    cache: list
    token: Any  # (1,) mx.array, the last sampled token (lazy)
    key: Any
    temperature: float
    top_p: float
    steer: Any = None  # this request's MLXSteer (fixed-shape arrays), applied in every decode step
    logits: Any = None  # this request's _LogitProcessor (bias / penalties / logprobs); None: the plain graph
    n: int = 0  # prompt tokens
    params: GenerationParams | None = None


class MLXBackend:
    name: ClassVar[str] = "mlx"

    def __init__(self) -> None:
        self.model = None
        self.sae = None
        self.layer = -1
        self.capture = True  # False: plain decoding, no residual capture and no SAE (benchmarks' baseline)
        self.prefill_chunk = 2048  # prompt tokens per prefill chunk (bounds attention memory on long prompts)
        self._effects = None  # the feature page's weights view, made on first use
        self.batch = None  # the rows decoding together (open_batch): a backends.mlx_batch.MLXBatch

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
        from mlx_lm.utils import load_model

        from backends.mlx_models import model_classes
        from backends.mlx_sae import MLXSAE, SAE_DTYPES

        if model.dtype is not None and model.dtype not in _MODEL_DTYPES:
            raise BackendError(f"unknown dtype {model.dtype!r}; choose one of {', '.join(_MODEL_DTYPES)}")
        if sae_dtype not in SAE_DTYPES:
            raise BackendError(f"unknown SAE dtype {sae_dtype!r}; choose one of {', '.join(SAE_DTYPES)}")
        path = checkpoint.local_dir(model)
        config = checkpoint.read_config(path)
        try:
            lm, _ = load_model(path, get_model_classes=model_classes)
        except (OSError, ValueError, KeyError) as exc:
            raise model_load_error(model.name_or_path, exc) from exc
        tokenizer = checkpoint.load_tokenizer(path)
        if model.dtype is not None:
            lm.set_dtype(getattr(mx, model.dtype))
            mx.eval(lm.parameters())
        args = lm.args
        sae.check_model(d_model=args.hidden_size, n_layers=args.num_hidden_layers, layer=layer)
        self.sae = MLXSAE(sae, top_k=top_k, input_norm=sae_input_norm, dtype=sae_dtype)
        self.model, self.layer = lm, layer
        self._effects = None
        return ModelInfo(
            model_id=model.name_or_path,
            tokenizer=tokenizer,
            n_layers=args.num_hidden_layers,
            d_model=args.hidden_size,
            vocab_size=args.vocab_size,
            context_length=int(args.max_position_embeddings),
            device=_describe_device(),
            dtype=_describe_dtype(lm, config),
            eos_token_ids=checkpoint.eos_token_ids(path, config, tokenizer),
            sae_dtype=sae_dtype,
            sliding_window=args.sliding_window,
        )

    def set_feature_filter(self, flt: FeatureFilter) -> None:
        if self.sae is None:
            raise BackendError("backend is not loaded")
        self.sae.set_filter(flt)

    def close(self) -> None:
        self.model = None
        self.sae = None
        self._effects = None
        self.batch = None

    def feature_effects(self, index: int, *, neighbours: int = 10, logits: int = 10) -> FeatureEffects:
        """Neighbours and logit effects of one feature, on the device (:mod:`backends.mlx_explore`)."""
        if self.model is None or self.sae is None:
            raise BackendError("backend is not loaded")
        from backends.mlx_explore import Effects

        if self._effects is None:
            inner = self.model.model
            self._effects = Effects(self.sae.W_dec, inner.embed_tokens, inner.norm.weight)
        return self._effects(index, neighbours=neighbours, logits=logits)

    # ------------------------------------------------------------------------------------------- the pieces
    def prefill(self, prompt_ids: list[int], params: GenerationParams) -> Prefilled:
        gen = self.prefill_steps(prompt_ids, params)
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value

    def prefill_steps(self, prompt_ids: list[int], params: GenerationParams, *,
                      joining: bool = False) -> Generator[None, None, Prefilled]:
        """All prompt chunks but the last only fill the caches (yielding after each); the last one also samples
        the first token. Nothing is evaluated here but the caches between chunks: the first record is queued with
        one ``mx.async_eval``, and the prompt records (one batched encode) stay lazy until ``to_host``. A request
        that joins is prefilled the same way (``joining``: local layers in the batch ring layout, for :meth:`join`)."""
        import mlx.core as mx

        if self.model is None or self.sae is None:
            raise BackendError("backend is not loaded")
        model, capture = self.model, self.capture
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        steer = self.sae.steerer(params.steering, self.layer) if params.steering is not None else None
        from backends.mlx_batch import joining_cache  # a joining request's caches: the batch's ring layout

        cache = joining_cache(model) if joining else model.make_cache()
        state = _Request(cache, None, mx.random.key(seed & 0xFFFF_FFFF_FFFF_FFFF),  # unsigned 64-bit
                         params.temperature, params.top_p, steer,
                         _LogitProcessor(params, self.model.args.vocab_size) if params.processes_logits else None,
                         len(prompt_ids), params)
        prompt_steer = steer if steer is not None and steer.positions == "all" else None
        want_prompt = params.prompt_features and capture
        stream = _generation_stream()
        ids = mx.array(prompt_ids, dtype=mx.int32)[None]
        kept: list = []
        chunk = max(1, int(self.prefill_chunk))
        while ids.shape[1] > chunk:
            with mx.stream(stream):
                out = model(ids[:, :chunk], state.cache, capture_layer=self.layer if want_prompt else None,
                            last_only=True, steer=prompt_steer)
                if want_prompt:
                    kept.append(out[1][0])
                mx.eval([c.state for c in state.cache] + kept)
            ids = ids[:, chunk:]
            yield
        record, hidden = self._step(state, ids, prompt_steer)
        prompt_records = None
        if want_prompt:
            with mx.stream(stream):
                prompt_records = self.sae.topk(mx.concatenate(kept + [hidden[0]], axis=0))
        return Prefilled(state, record, prompt_records)

    def decode_step(self, state: _Request):
        record, _ = self._step(state, state.token[None], state.steer)
        return record

    def to_host(self, record) -> np.ndarray:
        return np.array(record)

    # ------------------------------------------------------------------------------------------- batching
    def open_batch(self, max_batch: int, max_context: int) -> int | None:
        """Allocate the batch's KV cache (:mod:`backends.mlx_batch`): ``max_batch`` rows of ``max_context``
        positions on the global layers and of ``sliding_window`` on the local ones; returns its bytes."""
        if self.model is None or self.sae is None:
            raise BackendError("backend is not loaded")
        from backends.mlx_batch import MLXBatch

        self.batch = MLXBatch(self.model, self.sae, max_batch, max_context, _generation_stream())
        return self.batch.bytes

    def join(self, key: object, pre: Prefilled) -> None:
        st: _Request = pre.state
        self.batch.join(key, st, st.n, st.params)

    def leave(self, key: object) -> None:
        self.batch.leave(key)

    def batch_step(self):
        # a lone row runs the solo decode step over its row's storage
        return self.batch.step(self.layer, self.capture, draw,
                               lambda st, cache: self._step(st, st.token[None], st.steer, cache)[0])

    def batch_to_host(self, step) -> list[tuple[object, np.ndarray]]:
        record, rows = step
        host = np.array(record)  # (B, width); a lone row's solo record is (width,)
        return [(r.key, rec) for r, rec in zip(rows, self.batch.split(host, rows, self.capture))]

    def reset_batch(self) -> None:
        if self.batch is not None:
            self.batch.clear()

    def corpus_pass(self, batch: CorpusBatch, *, records: bool = False) -> CorpusResult:
        """Prefill only: block N's output of a padded batch, the SAE encode, statistics reduced on the device,
        all one lazy graph evaluated once."""
        if self.model is None or self.sae is None:
            raise BackendError("backend is not loaded")
        from backends.mlx_corpus import corpus_pass

        return corpus_pass(self.model, self.sae, self.layer, batch, _generation_stream(), records=records)

    def _step(self, state: _Request, tokens, steer, cache=None):
        """Graph for one forward over ``tokens`` (1, L), block N's output rewritten by ``steer`` when given:
        sample the next token, pack its record, queue both with one ``mx.async_eval``. Returns the record and
        block N's output at every position of ``tokens``. ``cache``: instead of the request's own caches."""
        import mlx.core as mx

        capture = self.capture
        with mx.stream(_generation_stream()):
            out = self.model(tokens, state.cache if cache is None else cache,
                             capture_layer=self.layer if capture else None, last_only=True, steer=steer)
            logits, hidden = out if capture else (out, None)
            tail = draw(state, logits[:, -1, :])
            parts = [state.token.astype(mx.float32)]
            if capture:
                parts.append(self.sae.topk(hidden[:, -1, :])[0])
            if tail is not None:
                parts.append(tail)
            record = parts[0] if len(parts) == 1 else mx.concatenate(parts)
        if state.logits is not None and state.logits.counts is not None:
            mx.async_eval(record, state.logits.counts)  # the counts the next step reads, computed with this one
        else:
            mx.async_eval(record)
        return record, hidden


def draw(state: _Request, last):
    """One request's next token from its (1, vocab) logits: its logit processing, then greedy or a sample with its
    own PRNG key (split once per sampled token). Sets ``state.token``; returns the record's logprob tail (None
    without logprobs). The solo step and every row of a batch step draw with this."""
    import mlx.core as mx

    sub = None
    if state.temperature > 0:  # greedy decoding needs no randomness (and no key split per token)
        state.key, sub = mx.random.split(state.key)
    proc = state.logits
    if proc is not None:
        last = proc.process(last)
    state.token = _sample(last, state.temperature, state.top_p, sub)
    return proc.after(last, state.token) if proc is not None else None


_STREAM = None


def _generation_stream():
    """A stream for generation, thread-local like mlx-lm's: the server runs generation on its own thread."""
    global _STREAM
    if _STREAM is None:
        import mlx.core as mx

        make = getattr(mx, "new_thread_local_stream", mx.new_stream)
        _STREAM = make(mx.default_device())
    return _STREAM


class _LogitProcessor:
    """One request's logit processing, fixed shapes built once (as the torch backend's ``LogitProcessor``): a
    dense (vocab,) bias, a (vocab,) count of the generated tokens for the presence / frequency penalties
    (updated in the graph after each draw), and the record's logprob tail ``[logprob, n ids, n logprobs]`` from
    the log_softmax of the processed logits, before temperature."""

    def __init__(self, params, vocab: int) -> None:
        import mlx.core as mx

        self.bias = None
        if params.logit_bias:
            ids, vals = params.bias_arrays()
            self.bias = mx.zeros((vocab,), dtype=mx.float32).at[mx.array(ids.astype(np.int32))].add(mx.array(vals))
        self.counts = mx.zeros((vocab,), dtype=mx.float32) if params.penalized else None
        self.presence = float(params.presence_penalty)
        self.frequency = float(params.frequency_penalty)
        self.n = params.logprobs
        self.vocab = vocab

    def process(self, logits):
        import mlx.core as mx

        logits = logits.astype(mx.float32)
        if self.bias is not None:
            logits = logits + self.bias
        if self.counts is not None:
            logits = logits - (self.frequency * self.counts + self.presence * (self.counts > 0).astype(mx.float32))
        return logits

    def after(self, logits, token):
        import mlx.core as mx

        if self.counts is not None:
            self.counts = self.counts + (mx.arange(self.vocab) == token.astype(mx.int32)).astype(mx.float32)
        if self.n is None:
            return None
        lp = (logits - mx.logsumexp(logits, axis=-1, keepdims=True))[0]
        chosen = mx.take(lp, token.astype(mx.int32))
        if self.n == 0:
            return chosen
        top = mx.argpartition(-lp, kth=self.n - 1)[: self.n]
        order = mx.take(top, mx.argsort(-mx.take(lp, top)))
        return mx.concatenate([chosen, order.astype(mx.float32), mx.take(lp, order)])


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
    # keep the smallest prefix whose mass reaches top_p: always the first token (a top_p that rounds to 0 in
    # float32 is greedy)
    drop = (cum - sorted_p >= top_p) & (mx.arange(sorted_p.shape[-1]) > 0)
    sorted_p = mx.where(drop, mx.zeros_like(sorted_p), sorted_p)
    choice = mx.random.categorical(mx.log(sorted_p), axis=-1, key=key)
    return mx.take_along_axis(order, choice[:, None], axis=-1)[:, 0]


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
