"""The backend boundary.

A backend provides the framework pieces and nothing else: ``load``, ``prefill``, one fixed-shape
``decode_step``, ``to_host`` and ``close`` (plus ``set_feature_filter`` and ``feature_effects``, the linear
algebra of a feature page). Each decode step computes, together
and once, the next token, the layer-N residual that produced it and the SAE top-k of that residual, packed
into one small device record. The per-token state machine around those pieces (pipelining, prompt-feature
steps, EOS / length, the record → :class:`Step`) is written once, in :mod:`neuroscope.core.decode`. Core code never
touches framework tensors: records cross the boundary only through ``to_host``.

The second entry point, ``corpus_pass``, is prefill only: a batch of corpus samples through the model up to
block N, the same SAE encode, and per-feature statistics reduced on the device (calibration, labelling). The
batch layout (padding, which positions count) and everything after the reduction are in the core
(:mod:`neuroscope.calibration.corpus_pass`, :mod:`neuroscope.calibration.stats`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generator, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from neuroscope.core.sae import SAEWeights

SAEInputNorm = Literal["none", "rms"]


@dataclass(frozen=True, slots=True)
class Step:
    """One token and the SAE features of the residual stream that produced it.

    For a generated token the features are those of the residual at the position whose logits chose it (the
    model's state as it wrote the token). For a prompt token (``prompt=True``) they are those of the residual
    at that token's own position.
    """

    token_id: int
    feature_ids: np.ndarray  # (k,) int64, strongest first
    feature_values: np.ndarray  # (k,) float32, the JumpReLU activations of those features
    l0: int  # how many features fired (activation > 0) before any mask
    position: int  # index of the residual position in the sequence
    prompt: bool = False
    finish_reason: str | None = None  # "stop" (EOS) or "length" on the last generated step
    filtered: int = 0  # features that fired but the filter's mask excluded from the ranking (0 without a mask)
    logprob: float | None = None  # the token's log-probability, when the request asked for logprobs
    top_logprobs: tuple[tuple[int, float], ...] | None = None  # the n most likely (token id, logprob), best first


@dataclass(frozen=True, slots=True)
class FeatureFilter:
    """A per-feature transform applied on the device *before* top-k.

    ``mask[i] == False`` removes feature i from the ranking; ``scale[i]`` multiplies its score for ranking
    only (reported activations stay raw). Both ``None`` is the identity.
    """

    mask: np.ndarray | None = None  # (d_sae,) bool
    scale: np.ndarray | None = None  # (d_sae,) float32

    @property
    def is_identity(self) -> bool:
        return self.mask is None and self.scale is None

    def validate(self, d_sae: int) -> None:
        for name, arr in (("mask", self.mask), ("scale", self.scale)):
            if arr is not None and arr.shape != (d_sae,):
                raise ValueError(f"feature filter {name} has shape {arr.shape}, the SAE has {d_sae} features")


SteerMode = Literal["add", "clamp", "ablate"]
SteerPositions = Literal["all", "generated"]
STEER_MODES: tuple[str, ...] = ("add", "clamp", "ablate")
STEER_POSITIONS: tuple[str, ...] = ("all", "generated")
MAX_STEER_FEATURES = 64
MAX_STEER_VALUE = 1000.0


@dataclass(frozen=True, slots=True)
class SteerFeature:
    """One steered SAE feature. ``add``: ``h + value * W_dec[index]``; ``clamp``: the feature's activation is
    set to ``value``, ``h + (value - a) * W_dec[index]`` with ``a`` its JumpReLU activation of the unsteered
    ``h``; ``ablate``: clamp to 0 (``value`` is 0)."""

    index: int
    mode: SteerMode
    value: float = 0.0


@dataclass(frozen=True, slots=True)
class Steering:
    """Per-request steering at the SAE layer (block N's output). Deltas of several features add up, each
    computed from the unsteered residual. ``positions="all"`` steers every prompt and generated position;
    ``"generated"`` only the positions computed by decode steps (position >= prompt length), so the prefill,
    its KV cache and the first generated token stay unsteered."""

    features: tuple[SteerFeature, ...]
    positions: SteerPositions = "all"

    def check(self, d_sae: int) -> None:
        """Raise ValueError when the spec is not one a backend may run (the server and the CLI validate
        earlier, with messages naming the field; this guards the backend boundary)."""
        if not self.features:
            raise ValueError("steering needs at least one feature")
        if len(self.features) > MAX_STEER_FEATURES:
            raise ValueError(f"at most {MAX_STEER_FEATURES} steered features, got {len(self.features)}")
        if self.positions not in STEER_POSITIONS:
            raise ValueError(f"steering positions must be one of {', '.join(STEER_POSITIONS)}, got {self.positions!r}")
        seen: set[int] = set()
        for f in self.features:
            if not 0 <= f.index < d_sae:
                raise ValueError(f"steered feature {f.index} is out of range: the SAE has {d_sae} features")
            if f.index in seen:
                raise ValueError(f"feature {f.index} is steered twice")
            seen.add(f.index)
            if f.mode not in STEER_MODES:
                raise ValueError(f"unknown steering mode {f.mode!r}")
            if not math.isfinite(f.value) or abs(f.value) > MAX_STEER_VALUE:
                raise ValueError(f"steering value {f.value} is not finite or above {MAX_STEER_VALUE:g} in size")
            if f.mode == "ablate" and f.value != 0.0:
                raise ValueError("ablate takes no value (it clamps to 0)")

    def steers(self, position: int, prompt_len: int) -> bool:
        """Whether the residual at ``position`` is steered (for a request whose prompt has ``prompt_len``
        tokens)."""
        return self.positions == "all" or position >= prompt_len

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fixed-shape inputs for a backend: ids (m,) int64, values (m,) float32 and clamp (m,) float32
        (1 for clamp / ablate, 0 for add), so that the per-position coefficient of feature i is
        ``values[i] - clamp[i] * a_i``."""
        ids = np.array([f.index for f in self.features], dtype=np.int64)
        values = np.array([0.0 if f.mode == "ablate" else f.value for f in self.features], dtype=np.float32)
        clamp = np.array([0.0 if f.mode == "add" else 1.0 for f in self.features], dtype=np.float32)
        return ids, values, clamp

    def to_json(self) -> dict[str, Any]:
        return {
            "features": [
                {"index": f.index, "mode": f.mode, **({} if f.mode == "ablate" else {"value": f.value})}
                for f in self.features
            ],
            "positions": self.positions,
        }


@dataclass(frozen=True, slots=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 0.0  # 0 -> greedy
    top_p: float = 1.0
    seed: int | None = None
    eos_token_ids: frozenset[int] = frozenset()
    prompt_features: bool = False  # also yield one Step per prompt token (from the prefill)
    steering: Steering | None = None  # per-request feature steering at the SAE layer; None: the plain graph
    # logit processing, applied on the device to the logits before temperature / top-p (OpenAI's semantics):
    # ``logits[id] += bias`` for each (id, bias), then ``logits -= frequency_penalty * count +
    # presence_penalty * (count > 0)`` with ``count`` how often each token was generated so far in this request
    logit_bias: tuple[tuple[int, float], ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # None: off; n >= 0: each generated token's logprob and the top n (id, logprob), both from the
    # log_softmax of the processed logits (after bias and penalties, before temperature and top-p)
    logprobs: int | None = None

    @property
    def processes_logits(self) -> bool:
        """Whether the request changes the logits or reads their log-probabilities (else: the plain graph)."""
        return bool(self.logit_bias) or self.penalized or self.logprobs is not None

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def bias_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``logit_bias`` as ids (m,) int64 and values (m,) float32 (a backend scatters them into a dense
        vector once per request)."""
        ids = np.array([i for i, _ in self.logit_bias], dtype=np.int64)
        vals = np.array([v for _, v in self.logit_bias], dtype=np.float32)
        return ids, vals


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Where the model comes from: a hub id or a local directory."""

    name_or_path: str
    dtype: str | None = None  # "float32", "bfloat16", "float16"; None -> backend default
    revision: str | None = None
    offline: bool = False  # only the local directory / Hugging Face cache; never the network


@dataclass(slots=True)
class ModelInfo:
    """What a loaded backend tells the core."""

    model_id: str
    tokenizer: Any  # a transformers tokenizer (chat template, encode/decode)
    n_layers: int
    d_model: int
    vocab_size: int
    context_length: int
    device: str
    dtype: str
    eos_token_ids: tuple[int, ...] = ()  # every id that ends a generation (config, generation config, tokenizer)
    sae_dtype: str = "float32"
    sliding_window: int | None = None  # local layers' window, None when every layer is global


@dataclass(slots=True)
class Prefilled:
    """What :meth:`Backend.prefill` hands the decode loop."""

    state: Any  # the backend's per-request state (KV cache, last sampled token, RNG), opaque to the core
    record: Any  # the first generated token's packed record, already queued on the device
    prompt_records: Any | None = None  # (n_prompt, 2 + 2k) packed records of the prompt positions, when asked


@dataclass(frozen=True, slots=True)
class CorpusBatch:
    """Samples for the corpus pass, laid out by the core: right-padded token ids from position 0.

    With causal attention a sample's real positions never see the pads after them, so every row uses positions
    0..L-1 and needs no padding mask. ``counted`` marks the positions whose activations enter the statistics:
    never a pad, a sample's position 0, BOS or any special token (see :mod:`neuroscope.calibration.corpus_pass`).
    """

    tokens: np.ndarray  # (B, L) int32
    lengths: np.ndarray  # (B,) int64, real tokens per row (the rest is padding)
    counted: np.ndarray  # (B, L) bool


@dataclass(frozen=True, slots=True)
class BatchStats:
    """One batch of the corpus pass, reduced on the device (only these come back to the host)."""

    tokens: int  # counted positions
    count: np.ndarray  # (d_sae,) counted positions where the feature fired (activation > 0)
    sum: np.ndarray  # (d_sae,) sum of its activations there
    # (d_sae,) sum of the squared deviations of those activations from their mean in this batch (sum / count):
    # batches combine exactly in float64 on the host (Chan et al.), where a float32 sum of squares minus the
    # squared mean would lose the variance of a feature that barely varies
    m2: np.ndarray
    max: np.ndarray  # (d_sae,) its largest activation (0 when it never fired)


@dataclass(frozen=True, slots=True)
class CorpusResult:
    """What :meth:`Backend.corpus_pass` returns for one batch."""

    stats: BatchStats
    # per sample, the packed feature record ``[l0, filtered, k ids, k values]`` of every real position (pads
    # dropped, position 0 and specials kept), when asked; the same top-k as the prompt records of ``prefill``
    records: list[np.ndarray] | None = None


@dataclass(frozen=True, slots=True)
class FeatureEffects:
    """What one feature's decoder direction does, computed on the device where the weights live
    (:meth:`Backend.feature_effects`); only these few numbers come back to the host.

    ``neighbours``: the features whose decoder rows are closest by cosine (itself excluded; a zero row has
    cosine 0 with everything), descending. ``positive`` / ``negative``: the tokens whose logits the direction
    raises / lowers most, ``W_dec[i] * (1 + final-norm weight) @ W_U.T`` without soft-capping, descending /
    ascending. Ties go to the lower index or token id.
    """

    neighbour_ids: np.ndarray  # (n,) int64
    neighbour_cosines: np.ndarray  # (n,) float32
    positive_ids: np.ndarray  # (m,) int64
    positive_values: np.ndarray  # (m,) float32
    negative_ids: np.ndarray  # (m,) int64
    negative_values: np.ndarray  # (m,) float32


def ranked(values: np.ndarray, ids: np.ndarray, k: int, *, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` of host candidates by value (descending or ascending), ties by the lower id."""
    order = np.lexsort((ids, -values if descending else values))[:k]
    return ids[order].astype(np.int64), values[order].astype(np.float32)


class BackendError(RuntimeError):
    """A backend could not be used (not installed, no device, bad model). The message is user-facing."""


@runtime_checkable
class Backend(Protocol):
    """The framework pieces. Records are float32 device arrays laid out as :mod:`neuroscope.core.records` says:
    a token's record is ``[token, l0, filtered, k ids, k values]`` (``[token]`` alone while ``capture`` is
    off), a prompt position's ``[l0, filtered, k ids, k values]``."""

    name: ClassVar[str]
    capture: bool  # False: plain decoding, no residual capture and no SAE (the benchmarks' baseline)

    @classmethod
    def is_available(cls) -> bool: ...

    @classmethod
    def install_hint(cls) -> str: ...

    def load(
        self,
        model: ModelSpec,
        sae: "SAEWeights",
        layer: int,
        *,
        top_k: int,
        sae_input_norm: SAEInputNorm = "none",
        sae_dtype: str = "float32",  # "bfloat16": weights stored in bf16, encode still accumulates in float32
    ) -> ModelInfo: ...

    def set_feature_filter(self, flt: FeatureFilter) -> None: ...

    def prefill(self, prompt_ids: list[int], params: GenerationParams) -> Prefilled:
        """Run the prompt (filling a fresh per-request cache), sample the first token and queue its record;
        with ``params.prompt_features`` also the records of every prompt position (one batched encode).
        ``params.steering`` becomes fixed-shape device inputs held by the returned state (nothing on the
        backend), applied to block N's output of the prefill when its positions are ``"all"``."""
        ...

    def decode_step(self, state: Any) -> Any:
        """Queue one fixed-shape step on the last sampled token: forward (block N's output steered when the
        request is), block-N capture, SAE encode + filter + top-k, sampling. Returns the new token's record
        without waiting for it."""
        ...

    def to_host(self, record: Any) -> np.ndarray:
        """Wait for ``record`` and copy it to the host (the one synchronisation per token)."""
        ...

    def corpus_pass(self, batch: CorpusBatch, *, records: bool = False) -> CorpusResult:
        """Prefill only, no sampling: one batched forward over ``batch`` that stops after block N (no later
        block, no logits), the SAE encode of every position exactly as serving does it (input norm included),
        and the per-feature reductions over the ``counted`` positions on the device. Only those (and, with
        ``records``, the packed top-k records) come back to the host, never a (tokens x d_sae) array."""
        ...

    def feature_effects(self, index: int, *, neighbours: int = 10, logits: int = 10) -> FeatureEffects:
        """Feature ``index``'s decoder-cosine neighbours (one matvec over ``W_dec``) and direct logit effects (one
        matvec of ``W_dec[index] * (1 + final-norm weight)`` with the unembedding), ranked on the device; the
        unembedding never leaves it. Called on the generation thread, between generations."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class BatchingBackend(Protocol):
    """What a backend adds for continuous batching (:class:`neuroscope.core.decode.Scheduler`). Rows are keyed by
    an opaque handle of the core's; a step advances every joined row by one token and its record crosses to the
    host once for all rows. A row's tokens and features never depend on the other rows."""

    def open_batch(self, max_batch: int, max_context: int) -> int | None:
        """Allocate the KV cache for ``max_batch`` rows of ``max_context`` positions (at start-up); returns its
        bytes, or None when the backend's engine decodes one request at a time."""
        ...

    def prefill_steps(self, prompt_ids: list[int], params: GenerationParams, *,
                      joining: bool = False) -> Generator[None, None, Prefilled]:
        """:meth:`Backend.prefill` in chunks: yields between chunks, returns the Prefilled (``joining``: for
        :meth:`join`)."""
        ...

    def join(self, key: Any, pre: Prefilled) -> None:
        """The prefilled request becomes a row of the batch (its first token is ``pre.record``)."""
        ...

    def leave(self, key: Any) -> None:
        """Free the row at once (a step already queued still carries it; its entry is ignored)."""
        ...

    def batch_step(self) -> Any:
        """Queue one step of every row; returns it without waiting."""
        ...

    def batch_to_host(self, step: Any) -> list[tuple[Any, np.ndarray]]:
        """Wait for a step and copy it to the host: (key, the row's token record) per row it carried."""
        ...

    def reset_batch(self) -> None:
        """Drop every row (after a failed step)."""
        ...
