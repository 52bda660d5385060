"""Everything ``neuroscope serve`` needs, built by the CLI (or by code and tests) and handed to ``serve()``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from neuroscope.core.sae import INPUT_NORMS, SAE_DTYPES
from neuroscope.core.sae_formats import DEFAULT_LAYER  # noqa: F401 - a params.npz without layer_N/ in its path
from neuroscope.server.origins import parse_allowed_hosts, parse_allowed_origins

FILTER_MODES = ("none", "frequency", "surprise", "combined")  # neuroscope.calibration.filters.MODES
# the torch backends' decode step: auto (compiled on torch-cuda, eager on torch-cpu), eager, or compiled
ENGINES = ("auto", "eager", "compiled")

DEFAULT_MODEL = "google/gemma-2-2b-it"
# the default model's default SAE (the registry, neuroscope/data/gemma_scope.json, marks each model's default)
DEFAULT_SAE = "google/gemma-scope-2b-pt-res"
DEFAULT_SAE_PATH = "layer_20/width_16k/average_l0_71/params.npz"
# the LLM whose auto-interp labels are served and that `labels generate` asks (an OpenRouter model id);
# LABELER_MODEL overrides it
DEFAULT_LABELER = "deepseek/deepseek-v3.2"
LABELER_ENV = "LABELER_MODEL"


def default_labeler() -> str:
    return os.environ.get(LABELER_ENV) or DEFAULT_LABELER


# the Hugging Face dataset repo `neuroscope pull` installs pre-generated calibration and labels from (and `push`
# writes to when NEUROSCOPE_DATA_REPO names one); NEUROSCOPE_DATA_REPO overrides it
DEFAULT_DATA_REPO = "neuroscope/gemma-2-2b-it-gemma-scope-data"
DATA_REPO_ENV = "NEUROSCOPE_DATA_REPO"


def data_repo() -> str:
    return os.environ.get(DATA_REPO_ENV) or DEFAULT_DATA_REPO


@dataclass
class ServeConfig:
    model: str = DEFAULT_MODEL
    # the SAE's hub repo and its file or directory there; None: the model's default (see with_sae)
    sae: str | None = None
    sae_path: str | None = None
    sae_local_path: str | None = None
    # the block whose output the SAE reads; None: the SAE's own config says (Gemma Scope 2, SAELens), else a hub
    # path's layer_N/, else DEFAULT_LAYER (resolved at load: neuroscope.runtime)
    sae_layer: int | None = None
    top_k: int = 10
    host: str = "127.0.0.1"
    port: int = 8080
    features_port: int = 8081
    backend: str = "auto"
    dtype: str | None = None
    engine: str = "auto"
    sae_input_norm: str = "none"
    sae_dtype: str = "float32"
    labels_path: str | None = None  # the first label source; the rest of the chain is found in the cache
    labeler: str | None = None  # whose auto-interp labels are served (default: default_labeler())
    label_threshold: float = 0.5  # labels scored below this are marked low_confidence
    neuronpedia: bool = True  # ask Neuronpedia (lazily) for labels of features no better source names
    demo: bool = False
    max_tokens: int = 1024  # default completion length when a request names none
    # when the default model/SAE cannot be fetched (offline, gated without a token), serve the demo instead
    demo_fallback: bool = False
    # serve-time feature filter from calibration statistics (neuroscope/calibration/filters.py): none, frequency, surprise,
    # combined; without calibration the filter is none (with a warning)
    feature_filter: str = "combined"
    filter_threshold: float = 0.5  # frequency: features firing on more than this fraction of tokens are hidden
    calibration_path: str | None = None  # default: the calibration file of this model / SAE / layer / norm
    # browser origins allowed besides loopback ("*" for any); loopback origins always are
    allowed_origins: tuple[str, ...] = ()
    # Host names answered besides loopback and the bind address ("*" for any); on a bind to another address than
    # loopback, any name is answered unless this is given
    allowed_hosts: tuple[str, ...] = ()
    # when set, every endpoint but /health requires it (Authorization: Bearer, or ?api_key= on the features port)
    api_key: str | None = field(default=None, repr=False)
    max_queue: int = 64  # requests waiting for a free batch row; beyond it 429
    max_batch: int = 8  # requests decoded together in one step (1: one at a time)
    prefill_chunk: int = 512  # prompt tokens per prefill forward, interleaved with the running requests' steps
    max_context: int | None = None  # prompt + completion tokens per request (the KV cache's length); None: the model's
    served_model_names: tuple[str, ...] = ()  # more names a request's "model" may use
    sae_default: bool = False  # the SAE is the model's default from the registry (none was named)

    def validate(self) -> None:
        for name, port in (("--port", self.port), ("--features-port", self.features_port)):
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be between 0 and 65535, got {port}")
        if self.port == self.features_port and self.port != 0:
            raise ValueError(f"--port and --features-port must differ (both are {self.port})")
        if self.top_k < 1:
            raise ValueError(f"--top-k must be at least 1, got {self.top_k}")
        if self.sae_layer is not None and self.sae_layer < 0:
            raise ValueError(f"--sae-layer must be >= 0, got {self.sae_layer}")
        if self.max_tokens < 1:
            raise ValueError(f"--max-tokens must be at least 1, got {self.max_tokens}")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.sae_dtype not in SAE_DTYPES:
            raise ValueError(f"--sae-dtype must be float32 or bfloat16, got {self.sae_dtype!r}")
        if self.sae_input_norm not in INPUT_NORMS:
            raise ValueError(f"--sae-input-norm must be none or rms, got {self.sae_input_norm!r}")
        if self.feature_filter not in FILTER_MODES:
            raise ValueError(f"--feature-filter must be one of {', '.join(FILTER_MODES)}, got {self.feature_filter!r}")
        if not 0.0 <= self.filter_threshold <= 1.0:
            raise ValueError(f"--filter-threshold must be between 0 and 1, got {self.filter_threshold}")
        if not 0.0 <= self.label_threshold <= 1.0:
            raise ValueError(f"--label-threshold must be between 0 and 1, got {self.label_threshold}")
        if self.labeler is not None and not self.labeler.strip():
            raise ValueError("--labeler (or LABELER_MODEL) must not be empty")
        if self.max_queue < 0:
            raise ValueError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.prefill_chunk < 1:
            raise ValueError(f"--prefill-chunk must be at least 1, got {self.prefill_chunk}")
        if self.max_context is not None and self.max_context < 2:
            raise ValueError(f"--max-context must be at least 2, got {self.max_context}")
        if any(not n.strip() for n in self.served_model_names):
            raise ValueError("--served-model-name must not be empty")
        parse_allowed_origins(self.allowed_origins)
        parse_allowed_hosts(self.allowed_hosts)
        if self.api_key is not None:
            if not self.api_key:
                raise ValueError("--api-key (or NEUROSCOPE_API_KEY) must not be empty")
            if not all(33 <= ord(c) <= 126 for c in self.api_key):
                raise ValueError("--api-key (or NEUROSCOPE_API_KEY) must be printable ASCII without spaces")


# ------------------------------------------------------------------------------------------- the SAE to serve
class SaeChoiceError(ValueError):
    """No SAE follows from what was given; the message is one line naming the options to pass."""


@dataclass(frozen=True)
class SaeChoice:
    sae: str | None
    sae_path: str | None
    sae_layer: int | None  # None: not decided here (the SAE's own, or the command's default)
    default: bool = False  # the model's registry default (or it at another layer)


def choose_sae(model: str, sae: str | None, sae_path: str | None, sae_local_path: str | None,
               sae_layer: int | None) -> SaeChoice:
    """The SAE to serve with ``model``, from what was given (None: not given). A local SAE, or a hub repo and
    path, is taken as given. Otherwise the registry's default SAE for the model fills in what is missing: the
    repo (with a given path), or repo, path and layer — at ``sae_layer`` when one is given (the same release,
    width and L0 kind there). A model without a default in the registry needs its SAE named."""
    from neuroscope.core import releases

    if sae_local_path or (sae and sae_path):
        return SaeChoice(sae, sae_path, sae_layer)
    default = releases.default_sae(model)
    if default is None:
        if sae:
            raise SaeChoiceError(f"--sae {sae} needs --sae-path (the SAE's file or directory in that repo)")
        if sae_path:
            raise SaeChoiceError(f"--sae-path {sae_path} needs --sae (the hub repo it is in)")
        raise SaeChoiceError(f"no default SAE is known for {model}: pass one with --sae REPO --sae-path PATH or "
                             "--sae-local-path FILE (`neuroscope sae list --model MODEL` shows the known releases)")
    if sae and sae != default.repo:
        raise SaeChoiceError(f"--sae {sae} needs --sae-path (the SAE's file or directory in that repo); "
                             f"{model}'s default SAE is in {default.repo}")
    if sae_path:
        return SaeChoice(default.repo, sae_path, sae_layer)
    if sae_layer is not None and sae_layer != default.layer:
        moved = releases.default_sae_at(model, sae_layer)
        if moved is None:
            layers = ", ".join(str(n) for n in releases.default_layers(model))
            there = [k for k in releases.saes_at(model, sae_layer) if k.repo == default.repo]
            example = f", e.g. --sae-path {there[0].path}" if there else ""
            raise SaeChoiceError(f"{default.repo} has no {default.width} SAE like {model}'s default at layer "
                                 f"{sae_layer} (it has layers {layers}): pass another --sae-layer, or an SAE with "
                                 f"--sae-path{example} (`neuroscope sae list --model {model}` lists them)")
        default = moved
    return SaeChoice(default.repo, default.path, default.layer, default=True)


def with_sae(config: ServeConfig) -> ServeConfig:
    """``config`` with its SAE decided by :func:`choose_sae` (its ``sae_layer`` taken as given); the demo and a
    config whose SAE is named are returned as they are."""
    if config.demo or config.sae_local_path or (config.sae and config.sae_path):
        return config
    choice = choose_sae(config.model, config.sae, config.sae_path, None, config.sae_layer)
    return replace(config, sae=choice.sae, sae_path=choice.sae_path, sae_default=choice.default,
                   sae_layer=config.sae_layer if choice.sae_layer is None else choice.sae_layer)
