"""Load what a server needs: backend, model, SAE, labels. Failures are one clear line (a ``StartupError``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from neuroscope import fixtures, registry
from neuroscope.config import ServeConfig
from neuroscope.hf import hub_reachable
from neuroscope.labels import LabelError, Labels
from neuroscope.protocol import Backend, BackendError, ModelInfo, ModelSpec
from neuroscope.sae import SAEError, SAEWeights, load_npz, resolve_sae_file


DEMO_MODEL_ID = "neuroscope-demo"


class StartupError(RuntimeError):
    """The server cannot start; the message is one user-facing line."""


@dataclass
class Runtime:
    config: ServeConfig
    backend: Backend
    info: ModelInfo
    sae: SAEWeights
    labels: Labels
    sae_id: str
    demo: bool
    fallback_reason: str | None = None


def demo_config(config: ServeConfig) -> ServeConfig:
    fx = fixtures.demo_fixture()
    return replace(
        config,
        model=str(fx.model_dir),
        sae_local_path=str(fx.sae_path),
        sae_layer=fx.sae_layer,
        labels_path=config.labels_path or str(fx.labels_path),
        demo=True,
    )


def load_runtime(config: ServeConfig, status: Callable[[str], None] = lambda _: None) -> Runtime:
    try:
        config.validate()
        backend_cls = registry.resolve(config.backend)
    except (ValueError, BackendError) as exc:
        raise StartupError(str(exc)) from None
    if config.demo:
        status("building the demo checkpoint (first run only)")
        config = demo_config(config)
    try:
        return _load(config, backend_cls, status)
    except (SAEError, BackendError, LabelError) as exc:
        if not config.demo_fallback or config.demo:
            raise StartupError(str(exc)) from None
        status(f"falling back to the built-in demo model: {exc}")
        rt = _load(demo_config(config), backend_cls, status)
        rt.fallback_reason = str(exc)
        return rt


def _load(config: ServeConfig, backend_cls: type[Backend], status) -> Runtime:
    model_dir = Path(config.model).expanduser()
    local_model = config.demo or model_dir.is_dir()
    if local_model and not (model_dir / "config.json").is_file():
        raise BackendError(f"cannot load model {config.model!r}: the directory holds no config.json (not a checkpoint)")
    offline = not local_model and not hub_reachable()
    sae_id = config.sae_local_path or f"{config.sae}/{config.sae_path}"
    status(f"loading SAE {sae_id}")
    sae = load_npz(resolve_sae_file(config.sae, config.sae_path, config.sae_local_path))
    status(f"loading model {config.model} on {backend_cls.name}")
    backend = backend_cls()
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
    labels = Labels.load(config.labels_path, sae.d_sae)
    if config.demo:
        info.model_id = DEMO_MODEL_ID
    return Runtime(config, backend, info, sae, labels, "demo (random SAE)" if config.demo else sae_id, config.demo)
