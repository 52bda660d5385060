"""Both ports from one event loop: two ``web.Application``s, each with its own runner and site."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from aiohttp import web

from neuroscope.engine import Engine
from neuroscope.feature_hub import FeatureHub
from neuroscope.filters import ActiveFilter
from neuroscope.labels import Labels
from neuroscope.protocol import Backend, ModelInfo
from neuroscope.server.access import Access
from neuroscope.server.chat import make_chat_app
from neuroscope.server.features import make_features_app
from neuroscope.server.state import ServerState

@dataclass
class Bound:
    host: str
    chat_port: int
    features_port: int

    @property
    def chat_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.chat_port}/v1"

    @property
    def features_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.features_port}/v1/features/stream"

    @property
    def viewer_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.features_port}/"


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class NeuroscopeServer:
    """``async with NeuroscopeServer(...) as bound:`` starts the engine and both ports; leaving stops them.

    Port 0 binds an ephemeral port (tests); ``bound`` says which.
    """

    def __init__(
        self,
        backend: Backend,
        info: ModelInfo,
        labels: Labels,
        *,
        layer: int,
        backend_name: str,
        sae_id: str,
        host: str = "127.0.0.1",
        port: int = 8080,
        features_port: int = 8081,
        default_max_tokens: int = 1024,
        queue_size: int = 1024,
        top_k: int | None = None,
        access: Access | None = None,
        feature_filter: ActiveFilter | None = None,  # already set on the backend; events report it
        filter_warning: str | None = None,
        sae_input_norm: str = "none",
    ):
        self.hub = FeatureHub(queue_size)
        self.engine = Engine(backend, info, self.hub, labels, layer=layer, feature_filter=feature_filter)
        self.access = access or Access(bind_host=host)
        self.state = ServerState(self.engine, self.hub, labels, info.model_id, backend_name, sae_id, default_max_tokens,
                                 top_k=top_k, access=self.access, sae_input_norm=sae_input_norm,
                                 filter_warning=filter_warning)
        self.host, self.port, self.features_port = host, port, features_port
        self._runners: list[web.AppRunner] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Bound:
        await self._stack.__aenter__()
        try:
            await self._stack.enter_async_context(self.engine)
            self._stack.push_async_callback(self._shutdown_http)
            ports = []
            for app, port in ((make_chat_app(self.state), self.port), (make_features_app(self.state), self.features_port)):
                runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
                await runner.setup()
                self._runners.append(runner)
                await web.TCPSite(runner, self.host, port).start()
                ports.append(runner.addresses[0][1])  # the real port when 0 was asked
            self.state.chat_port, self.state.features_port = ports
            self.access.viewer_port = self.state.features_port
            return Bound(self.host, *ports)
        except BaseException:
            await self._stack.__aexit__(None, None, None)
            raise

    async def __aexit__(self, *exc) -> None:
        await self._stack.__aexit__(*exc)

    async def _shutdown_http(self) -> None:
        """Close every SSE stream, stop generation, then the runners (the engine is joined after this)."""
        self.hub.close()
        for job_stream in list(self.state.streams):
            with contextlib.suppress(Exception):
                job_stream.stop_streaming()
        self.engine.stop_all()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()


async def run_until_signalled(server: NeuroscopeServer, on_ready=None, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT / SIGTERM (or ``stop`` is set), then shut down cleanly."""
    import signal

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        async with server as bound:
            if on_ready is not None:
                on_ready(bound)
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
