"""Load what a server needs: backend, model, SAE, labels. Failures are one clear line (a ``StartupError``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from neuroscope.calibration import filters
from neuroscope.calibration import stats as calibration
from neuroscope.calibration.filters import ActiveFilter
from neuroscope.calibration.stats import CalibrationError
from neuroscope.config import ServeConfig, with_sae
from neuroscope.core import fixtures, registry
from neuroscope.core.protocol import Backend, BackendError, ModelInfo, ModelSpec
from neuroscope.core import sae_formats
from neuroscope.core.sae import SAEError, SAEWeights
from neuroscope.labels.chain import LabelChain
from neuroscope.labels.sources import build_chain
from neuroscope.labels.table import LabelError
from neuroscope.store import paths
from neuroscope.store.hf import hub_reachable

DEMO_MODEL_ID = "neuroscope-demo"


class StartupError(RuntimeError):
    """The server cannot start; the message is one user-facing line."""


@dataclass
class Runtime:
    config: ServeConfig
    backend: Backend
    info: ModelInfo
    sae: SAEWeights
    labels: LabelChain
    sae_id: str
    demo: bool
    fallback_reason: str | None = None
    feature_filter: ActiveFilter | None = None  # the filter in force (set on the backend)
    filter_warning: str | None = None  # why it is none although one was asked (no calibration found)
    engine: str | None = None  # the torch decode step ("eager", "compiled (...)"); None for other backends
    compile_seconds: float | None = None  # start-up compile of the decode step (compiled engine)
    engine_warning: str | None = None  # why --engine auto fell back to eager (the compile failed)


def demo_config(config: ServeConfig) -> ServeConfig:
    fx = fixtures.demo_fixture()
    return replace(
        config,
        model=str(fx.model_dir),
        sae_local_path=str(fx.sae_path),
        sae_layer=fx.sae_layer,
        demo=True,
        sae_default=False,
    )


def resolve_sae_layer(config: ServeConfig) -> ServeConfig:
    """``config`` with ``sae_layer`` set: the layer the SAE's config declares (an explicit one must agree), or
    the one given, or a Gemma Scope hub path's ``layer_N/``, or 20. Reads only the SAE's config (a hub
    directory's config is downloaded; a params.npz is not). :class:`SAEError` when they disagree."""
    if config.demo:
        return config
    loc = sae_formats.locate(config.sae, config.sae_path, config.sae_local_path, fetch_weights=False)
    return _with_layer(config, loc, sae_formats.read_config(loc).layer)


def _sae_id(config: ServeConfig) -> str:
    return config.sae_local_path or f"{config.sae}/{config.sae_path}"


def _with_layer(config: ServeConfig, loc, declared: int | None) -> ServeConfig:
    """``config`` with the layer :func:`sae_formats.resolve_layer` makes of what was given and ``declared``."""
    return replace(config, sae_layer=sae_formats.resolve_layer(config.sae_layer, declared, hub_path=loc.hub_path,
                                                               source=f"SAE {_sae_id(config)}"))


def load_runtime(config: ServeConfig, status: Callable[[str], None] = lambda _: None) -> Runtime:
    try:
        config = with_sae(config)
        config.validate()
        backend_cls = registry.resolve(config.backend)
    except (ValueError, BackendError) as exc:
        raise StartupError(str(exc)) from None
    if config.engine != "auto" and not getattr(backend_cls, "engines", ()):
        raise StartupError(f"--engine {config.engine} applies to the torch backends; {backend_cls.name} has one "
                           "engine (use --engine auto)")
    if config.demo:
        status("building the demo checkpoint (first run only)")
        config = demo_config(config)
    try:
        rt = _load(config, backend_cls, status)
    except (SAEError, BackendError, LabelError) as exc:
        if not config.demo_fallback or config.demo:
            raise StartupError(str(exc)) from None
        status(f"falling back to the built-in demo model: {exc}")
        rt = _load(demo_config(config), backend_cls, status)
        rt.fallback_reason = str(exc)
    finish_probe(rt.labels)
    try:
        rt.feature_filter, rt.filter_warning = resolve_filter(rt.config, rt.sae.d_sae, demo=rt.demo)
        rt.backend.set_feature_filter(rt.feature_filter.feature_filter)
    except (CalibrationError, OSError, ValueError) as exc:
        rt.backend.close()
        raise StartupError(str(exc)) from None
    describe = getattr(rt.backend, "describe_engine", None)
    rt.engine = describe() if describe is not None else None
    return rt


def compile_decode_step(rt: Runtime, status: Callable[[str], None] = lambda _: None) -> None:
    """Under ``--engine compiled``, compile the decode step before the first request (``serve`` does; the
    corpus pass never decodes): the cache bucket of a short prompt and the default ``max_tokens``, other lengths
    on first use. Sets ``rt.compile_seconds``. A step that cannot compile is a ``StartupError`` under an explicit
    ``--engine compiled``; under ``auto`` (compiled by default on CUDA) the server starts with the eager engine and
    says why (``rt.engine_warning``)."""
    if rt.engine is None or getattr(rt.backend, "engine", None) != "compiled":
        return
    status("compiling the decode step (torch.compile; faster once inductor's cache is warm)")
    try:
        rt.compile_seconds = rt.backend.warm_up(rt.config.max_tokens + 1)
    except BackendError as exc:
        if rt.config.engine != "auto":
            rt.backend.close()
            raise StartupError(str(exc)) from None
        rt.backend.use_eager()
        rt.engine = rt.backend.describe_engine()
        rt.engine_warning = f"{exc}: serving with the eager engine"


def resolve_filter(config: ServeConfig, d_sae: int, *, demo: bool = False) -> tuple[ActiveFilter, str | None]:
    """The filter ``config`` asks for, from its calibration: ``--calibration-path`` (which must exist, parse and
    match the served model / SAE / layer / norm / width, else :class:`CalibrationError` naming what differs), or
    the file calibrated for this configuration in the cache. With none found, filter ``none`` and a warning."""
    if config.sae_layer is None:
        config = resolve_sae_layer(config)
    ns = calibration.namespace_for(config.model, config.sae, config.sae_path, config.sae_local_path,
                                   config.sae_layer, config.sae_input_norm, demo=demo)
    expected = calibration.identity(ns, d_sae)
    mode, threshold = config.feature_filter, config.filter_threshold
    if config.calibration_path:
        cal = calibration.load(config.calibration_path)
        cal.check_identity(expected)
        return filters.build(mode, cal, threshold), None
    if mode == "none":
        return filters.build("none", None, threshold), None
    unfiltered = "features are ranked by raw activation, with no filter"
    path = paths.calibration_file(ns)
    if not path.is_file():
        return filters.build("none", None, threshold), (
            f"no calibration for this model, SAE, layer and input norm (looked for {path}): {unfiltered}. "
            "Run `neuroscope calibrate run` with the same model and SAE options, or pass --calibration-path.")
    try:
        cal = calibration.load(path)
        cal.check_identity(expected)
    except CalibrationError as exc:
        return filters.build("none", None, threshold), f"{exc}: {unfiltered}"
    return filters.build(mode, cal, threshold), None


def _load(config: ServeConfig, backend_cls: type[Backend], status) -> Runtime:
    model_dir = Path(config.model).expanduser()
    local_model = config.demo or model_dir.is_dir()
    if local_model and not (model_dir / "config.json").is_file():
        raise BackendError(f"cannot load model {config.model!r}: the directory holds no config.json (not a checkpoint)")
    offline = not local_model and not hub_reachable()
    sae_id = _sae_id(config)
    status(f"loading SAE {sae_id}")
    loc = sae_formats.locate(config.sae, config.sae_path, config.sae_local_path)
    sae = sae_formats.load(loc)
    # the layer, resolved once: everything after (calibration, labels, the panel) reads config.sae_layer
    config = _with_layer(config, loc, sae.layer)
    status(f"loading model {config.model} on {backend_cls.name}")
    backend = backend_cls()
    if config.engine != "auto":
        backend.engine = config.engine  # read by load(); only backends with engines get here
    if hasattr(backend, "prefill_chunk"):
        backend.prefill_chunk = config.prefill_chunk
    spec = ModelSpec(config.model, dtype=config.dtype, offline=offline)
    try:
        info = backend.load(
            spec, sae, config.sae_layer, top_k=config.top_k, sae_input_norm=config.sae_input_norm,
            sae_dtype=config.sae_dtype,
        )
    except (OSError, ValueError) as exc:
        if isinstance(exc, SAEError):
            raise
        raise BackendError(f"cannot load model {config.model!r}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    labels = load_labels(config, sae.d_sae)
    if config.demo:
        info.model_id = DEMO_MODEL_ID
    return Runtime(config, backend, info, sae, labels, "demo (random SAE)" if config.demo else sae_id, config.demo)


def load_labels(config: ServeConfig, d_sae: int) -> LabelChain:
    """The label chain of the served SAE (see :mod:`neuroscope.labels.chain`), with a lazy Neuronpedia fetcher when
    the registry knows the SAE. Only a broken ``--labels-path`` raises (:class:`LabelError`)."""
    from neuroscope.labels.neuronpedia.cache import NeuronpediaCache
    from neuroscope.labels.neuronpedia.client import ClientSettings
    from neuroscope.labels.neuronpedia.lazy import LazyNeuronpedia

    if config.sae_layer is None:
        config = resolve_sae_layer(config)
    ns = calibration.namespace_for(config.model, config.sae, config.sae_path, config.sae_local_path,
                                   config.sae_layer, config.sae_input_norm, demo=config.demo)
    demo_labels = fixtures.demo_fixture().labels_path if config.demo else None
    chain = build_chain(ns, d_sae, labels_path=config.labels_path, labeler=config.labeler,
                        demo_labels_path=demo_labels, threshold=config.label_threshold,
                        neuronpedia=config.neuronpedia and not config.demo)
    if not config.neuronpedia and not config.demo:
        chain.neuronpedia.skipped = "turned off (--no-neuronpedia)"
    ids = chain.neuronpedia.ids
    if ids is not None:
        settings = ClientSettings.from_env()
        cache = NeuronpediaCache(ids.model_id, ids.source_id, d_sae)
        chain.neuronpedia.lazy = LazyNeuronpedia(ids, settings, cache, chain.add_neuronpedia)
        chain.neuronpedia.probe = _Probe(settings.base_url)
    return chain


class _Probe(threading.Thread):
    def __init__(self, base_url: str):
        super().__init__(name="neuronpedia-probe", daemon=True)
        self.base_url, self.error = base_url, None
        self.start()

    def run(self) -> None:
        from neuroscope.labels.neuronpedia.client import probe

        self.error = probe(self.base_url)


def finish_probe(chain: LabelChain, timeout: float = 5.0) -> None:
    """After loading: when Neuronpedia cannot be reached, serve its cached labels only, and say why (offline)."""
    np_info = chain.neuronpedia
    thread, np_info.probe = np_info.probe, None
    if thread is None:
        return
    thread.join(timeout)
    error = "no answer in time" if thread.is_alive() else thread.error
    if error is not None:
        np_info.lazy = None
        np_info.skipped = f"offline ({error}): only its cached labels are served"
