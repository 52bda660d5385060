"""``serve(config)``: load everything, print the start-up panel, serve both ports until a signal."""

from __future__ import annotations

import asyncio

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from neuroscope.config import ServeConfig, default_labeler
from neuroscope.core import releases
from neuroscope.core.sae_formats import FORMAT_NAMES
from neuroscope.runtime import Runtime, StartupError, compile_decode_step, load_runtime
from neuroscope.server.access import Access
from neuroscope.server.app import Bound, NeuroscopeServer, run_until_signalled
from neuroscope.server.origins import OriginPolicy, is_loopback_host


def exposure_warning(config: ServeConfig) -> str | None:
    """A bind address other than loopback without an API key lets anyone on the network use the server."""
    if config.api_key is not None or is_loopback_host(config.host):
        return None
    return (f"--host {config.host} makes both ports reachable from the network and no API key is set: anyone who "
            "can reach them can chat with the model and read the feature stream. Set an API key with --api-key "
            "(or the NEUROSCOPE_API_KEY environment variable).")


def _access_row(cfg: ServeConfig) -> str:
    key = "API key required" if cfg.api_key is not None else "no API key"
    if "*" in cfg.allowed_origins:
        origins = "any origin"
    else:
        origins = ", ".join(("loopback", *cfg.allowed_origins))
    if "*" in cfg.allowed_hosts or (not cfg.allowed_hosts and not is_loopback_host(cfg.host)):
        hosts = "any"
    else:
        hosts = ", ".join(("loopback", *cfg.allowed_hosts))
    return f"{key}; browser origins: {origins}; host names: {hosts}"


def _filter_rows(rt: Runtime) -> list[tuple[str, str]]:
    flt = rt.feature_filter
    if flt is None or flt.mode == "none":
        rows = [("filter", "none (features ranked by raw activation)")]
        if flt is not None and flt.calibration:
            rows.append(("calibration", escape(flt.calibration)))
        if rt.filter_warning:
            rows.append(("", f"[yellow]warning: {escape(rt.filter_warning)}[/]"))
        return rows
    hide = f"hides features firing on more than {100 * flt.threshold:g} % of tokens"
    what = {"frequency": hide, "surprise": "ranks features by surprise",
            "combined": f"{hide}, ranks the rest by surprise"}
    return [("filter", f"{flt.mode} ({what[flt.mode]})"), ("calibration", escape(str(flt.calibration)))]


def _label_rows(rt: Runtime) -> list[tuple[str, str]]:
    """How many labels each source gives, the labeler, and the Neuronpedia source (or why there is none)."""
    lab, cfg = rt.labels, rt.config
    counts = lab.counts()
    given = ", ".join(f"{n:,} {name}" for name, n in counts.items() if n and name != "numeric")
    rows = [("labels", f"{escape(given or 'none named')}; {counts['numeric']:,} numeric (feature_<i>)"),
            ("labeler", f"{escape(cfg.labeler or default_labeler())} (auto-interp labels scored below "
                        f"{cfg.label_threshold:g} are low-confidence)")]
    np_info = lab.neuronpedia
    if np_info.ids is not None and np_info.lazy is not None:
        rows.append(("neuronpedia", f"{escape(str(np_info.ids))}: {counts['neuronpedia']:,} cached, the rest asked as "
                                    f"features appear ({escape(np_info.lazy.settings.base_url)})"))
    elif np_info.ids is not None:
        rows.append(("neuronpedia", f"{escape(str(np_info.ids))}: {counts['neuronpedia']:,} cached; [yellow]not "
                                    f"asked: {escape(np_info.skipped or '')}[/]"))
    else:
        rows.append(("neuronpedia", f"skipped: {escape(np_info.skipped or 'unknown SAE')}"))
    for w in lab.warnings:
        rows.append(("", f"[yellow]warning: {escape(w)}[/]"))
    return rows


def batch_row(engine, config: ServeConfig) -> str:
    """The batch settings: rows, context and the KV cache planned for them, or why requests go one at a time."""
    if engine.max_batch > 1:
        gib = engine.kv_bytes / 2**30
        took = getattr(engine.backend, "batch_compile_seconds", None)
        took = f"; batch buckets compiled in {took:.1f} s" if took is not None else ""
        capped = (f" — capped by default, the model takes {engine.info.context_length:,}: --max-context for more"
                  if engine.context_capped else "")
        return (f"up to {engine.max_batch} requests per step, {engine.max_context:,} tokens each{capped} (KV cache "
                f"{gib:.2f} GiB allocated); prompts prefilled in chunks of {config.prefill_chunk}{took}")
    why = "--max-batch 1" if config.max_batch == 1 else "this backend / engine decodes one request at a time"
    return f"one request at a time ({why}), {engine.max_context:,} tokens each"


def _panel(rt: Runtime, bound: Bound, engine=None) -> Panel:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold cyan", justify="right")
    t.add_column(overflow="fold")
    info, cfg = rt.info, rt.config
    t.add_row("model", escape(info.model_id) + ("  [yellow](built-in demo)[/]" if rt.demo else ""))
    if cfg.served_model_names:
        t.add_row("also named", escape(", ".join(cfg.served_model_names)))
    fmt = FORMAT_NAMES.get(rt.sae.format, rt.sae.format)
    t.add_row("SAE", f"{escape(rt.sae_id)}  ({rt.sae.d_model} → {rt.sae.d_sae} features, {fmt}, {rt.sae.kind}, "
                     f"{cfg.sae_dtype})")
    if cfg.sae_default and not rt.demo:
        default = releases.default_sae(cfg.model)
        moved = f" moved to layer {cfg.sae_layer}" if default is not None and default.path != cfg.sae_path else ""
        t.add_row("", f"the default SAE of {escape(cfg.model)}, from the registry{moved} (--sae, --sae-path or "
                      "--sae-local-path serve another)")
    t.add_row("layer", f"output of block {cfg.sae_layer} of {info.n_layers}  (input norm: {cfg.sae_input_norm})")
    t.add_row("backend", f"{rt.backend.name} on {info.device}, {info.dtype}")
    if rt.engine is not None:
        took = f", compiled in {rt.compile_seconds:.1f} s" if rt.compile_seconds is not None else ""
        t.add_row("engine", escape(rt.engine) + took)
        if rt.engine_warning:
            t.add_row("", f"[yellow]warning: {escape(rt.engine_warning)}[/]")
    if engine is not None:
        t.add_row("batching", escape(batch_row(engine, cfg)))
    t.add_row("top-k", str(cfg.top_k))
    for name, value in _label_rows(rt):
        t.add_row(name, value)
    for name, value in _filter_rows(rt):
        t.add_row(name, value)
    t.add_row("chat", f"{bound.chat_url}/chat/completions")
    t.add_row("features", bound.features_url)
    t.add_row("viewer", bound.viewer_url)
    t.add_row("access", escape(_access_row(cfg)))
    if rt.demo:
        t.add_row("", "[yellow]The demo model and SAE have random weights: varied but meaningless text and features.[/]")
    if rt.fallback_reason:
        t.add_row("", f"[yellow]Serving the demo because the default model could not be loaded: {escape(rt.fallback_reason)}[/]")
    return Panel(t, title="Neuroscope", border_style="cyan", expand=False)


def _namespace(config: ServeConfig):
    """Where this model / SAE / layer / norm keeps its calibration and examples (for feature pages)."""
    from neuroscope.calibration.stats import namespace_for

    return namespace_for(config.model, config.sae, config.sae_path, config.sae_local_path, config.sae_layer,
                         config.sae_input_norm, demo=config.demo)


def serve(config: ServeConfig, console: Console | None = None) -> int:
    """Run the server in the foreground; return the exit code. Raises ``StartupError`` when it cannot start."""
    console = console or Console(stderr=True)
    with console.status("starting") as status:
        rt = load_runtime(config, lambda msg: status.update(msg))
        compile_decode_step(rt, lambda msg: status.update(msg))
    server = NeuroscopeServer(
        rt.backend,
        rt.info,
        rt.labels,
        layer=rt.config.sae_layer,
        backend_name=rt.backend.name,
        sae_id=rt.sae_id,
        host=rt.config.host,
        port=rt.config.port,
        features_port=rt.config.features_port,
        default_max_tokens=rt.config.max_tokens,
        top_k=rt.config.top_k,
        access=Access(OriginPolicy.from_list(rt.config.allowed_origins), rt.config.api_key, rt.config.host,
                      allowed_hosts=rt.config.allowed_hosts),
        served_model_names=rt.config.served_model_names,
        max_queue=rt.config.max_queue,
        feature_filter=rt.feature_filter,
        filter_warning=rt.filter_warning,
        sae_input_norm=rt.config.sae_input_norm,
        explore_namespace=_namespace(rt.config),
        max_batch=rt.config.max_batch,
        max_context=rt.config.max_context,
    )

    def ready(bound: Bound) -> None:
        console.print(_panel(rt, bound, server.engine))
        warning = exposure_warning(rt.config)
        if warning:
            console.print(f"[bold red]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        console.print(
            f"[bold green]ready[/] chat: {bound.chat_url}  features: {bound.features_url}  viewer: {bound.viewer_url}"
            "  (Ctrl-C to stop)",
            highlight=False,
            soft_wrap=True,
        )

    try:
        asyncio.run(run_until_signalled(server, ready))
    except OSError as exc:  # e.g. the port is taken
        raise StartupError(f"cannot listen on {config.host}: {exc.strerror or exc}") from None
    finally:
        rt.backend.close()
    console.print("stopped")
    return 0
