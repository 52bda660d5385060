"""Both ports from one event loop: two ``web.Application``s, each with its own runner and site."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from neuroscope.calibration.filters import ActiveFilter
from neuroscope.core.engine import Engine
from neuroscope.core.feature_hub import FeatureHub
from neuroscope.core.protocol import Backend, ModelInfo
from neuroscope.explore.page import Explorer
from neuroscope.explore.search import FeatureSearch
from neuroscope.labels.chain import LabelChain
from neuroscope.labels.table import Labels
from neuroscope.server import redact
from neuroscope.server.access import Access
from neuroscope.server.chat import make_chat_app
from neuroscope.server.errors import APIError, internal_error, new_request_id
from neuroscope.server.features import make_features_app
from neuroscope.server.metrics import Metrics
from neuroscope.server.state import ServerState

log = logging.getLogger("neuroscope.server")
# after an early answer (408, 413), the rest of an unread body is read and dropped this long before closing, so
# the client can read the answer; aiohttp's default is 10 s
LINGER = 2.0

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


class _JSONErrorHandler(RequestHandler):
    """Requests aiohttp cannot parse (bad framing, oversized headers, a corrupt body) are answered with an
    OpenAI-shaped JSON error, logged in one line at debug level instead of a traceback per request; neither
    repeats the raw bytes aiohttp quotes (they may hold an API key). A failure outside the applications'
    error middleware is a JSON 500 too, logged once."""

    def handle_error(self, request, status=500, exc=None, message=None):
        if request.writer.output_size > 0 or isinstance(exc, ConnectionError):
            # a stream already begun (its failure is logged by the error middleware) or a client gone
            raise ConnectionError("a response was already started; cannot send the error")
        if status >= 500:
            request_id = new_request_id()
            log.error("internal error on %s (request id %s)", request.path, request_id, exc_info=exc)
            resp = internal_error(request_id)
        else:
            text = redact.parse_error_text(message, exc)
            log.debug("bad request from %s: %s", request.remote, text)
            resp = APIError(f"the request could not be read: {text}", status=status, code="bad_request").response()
        resp.force_close()
        return resp


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        kwargs = server._kwargs
        server.__class__ = type("JSONErrorServer", (web.Server,),
                                {"__call__": lambda srv: _JSONErrorHandler(srv, loop=srv._loop, **kwargs)})
        return server


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
        served_model_names: tuple[str, ...] = (),
        max_queue: int = 64,
        idle_timeout: float = 30.0,
        body_timeout: float = 20.0,
        shutdown_grace: float = 5.0,
        feature_filter: ActiveFilter | None = None,  # already set on the backend; events report it
        filter_warning: str | None = None,
        sae_input_norm: str = "none",
        explore_namespace=None,  # a store.paths.Namespace: where feature pages find calibration and examples
        max_batch: int = 1,
        max_context: int | None = None,
    ):
        """``idle_timeout``: a connection that has not sent a complete request head within this many seconds
        of opening or of its last response is closed (idle keep-alive and slowloris alike); ``body_timeout``:
        the same for a request's body once its head is in (then ``LINGER`` s more to drop the unread rest); ``shutdown_grace``: how long shutdown waits for
        cancelled requests to be answered."""
        labels = LabelChain.of(labels)
        self.labels = labels
        self.hub = FeatureHub(queue_size)
        self.engine = Engine(backend, info, self.hub, labels, layer=layer, feature_filter=feature_filter,
                             max_batch=max_batch, max_context=max_context)
        self.access = access or Access(bind_host=host)
        redact.install(self.access.api_key)
        self.metrics = Metrics(self.engine, self.hub)
        self.engine.on_token = self.metrics.token
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="neuroscope-request")
        self.state = ServerState(self.engine, self.hub, labels, info.model_id, backend_name, sae_id, default_max_tokens,
                                 top_k=top_k, access=self.access, aliases=tuple(served_model_names),
                                 max_queue=max_queue, body_timeout=body_timeout, executor=self._executor,
                                 metrics=self.metrics, sae_input_norm=sae_input_norm,
                                 filter_warning=filter_warning,
                                 explorer=Explorer.for_namespace(labels, info.tokenizer, explore_namespace),
                                 search=FeatureSearch(labels))
        self.idle_timeout, self.shutdown_grace = idle_timeout, shutdown_grace
        self.host, self.port, self.features_port = host, port, features_port
        self._runners: list[web.AppRunner] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Bound:
        await self._stack.__aenter__()
        try:
            self._stack.callback(self._executor.shutdown, wait=False, cancel_futures=True)
            lazy = self.labels.neuronpedia.lazy
            if lazy is not None:  # Neuronpedia answers arrive on this loop, in the background
                await self._stack.enter_async_context(lazy)
            await self._stack.enter_async_context(self.engine)
            self._stack.push_async_callback(self._shutdown_http)
            ports = []
            for app, port in ((make_chat_app(self.state), self.port), (make_features_app(self.state), self.features_port)):
                runner = _Runner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0,
                                 keepalive_timeout=self.idle_timeout, auto_decompress=False,
                                 lingering_time=LINGER)
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
        """Cancel generation and let each request answer it (503 JSON, or an error chunk on a stream; feature
        subscribers get ``generation_complete`` "cancelled"), then close every SSE stream and the runners (the
        engine is joined after this)."""
        self.state.shutting_down = True
        self.engine.stop_all()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_grace
        while self.engine.unfinished > 0 and loop.time() < deadline:
            self.engine.stop_all()  # anything queued meanwhile
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the handlers write their answers
        self.hub.close()
        for job_stream in list(self.state.streams):
            with contextlib.suppress(Exception):
                job_stream.stop_streaming()
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
