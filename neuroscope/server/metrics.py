"""``GET /metrics`` on the chat port: Prometheus text format, from a registry of this server's own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

if TYPE_CHECKING:
    from neuroscope.core.engine import Engine
    from neuroscope.core.feature_hub import FeatureHub

TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Dropped:
    """Events dropped for slow feature-stream subscribers (the hub counts them)."""

    def __init__(self, hub: "FeatureHub"):
        self.hub = hub

    def collect(self):
        c = CounterMetricFamily("neuroscope_feature_events_dropped",
                                "Feature events dropped because a subscriber's queue was full")
        c.add_metric([], self.hub.dropped)
        yield c


class Metrics:
    """One registry per server, so two servers in one process (tests) never share counts."""

    def __init__(self, engine: "Engine", hub: "FeatureHub"):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("neuroscope_requests", "HTTP requests on the chat port by route and status",
                                ["route", "status"], registry=r)
        self.tokens = Counter("neuroscope_generated_tokens", "Tokens generated", registry=r)
        self.time_per_token = Histogram("neuroscope_time_per_token_seconds",
                                        "Time between consecutive generated tokens", buckets=TOKEN_BUCKETS,
                                        registry=r)
        queue = Gauge("neuroscope_queue_depth", "Requests waiting for a free batch row", registry=r)
        queue.set_function(lambda: engine.queued)
        running = Gauge("neuroscope_running_requests", "Requests being generated (batch rows in use)", registry=r)
        running.set_function(lambda: len(engine.running))
        batch = Gauge("neuroscope_last_batch_size", "Requests advanced by the last decode step", registry=r)
        batch.set_function(lambda: engine.last_batch)
        subs = Gauge("neuroscope_feature_subscribers", "Open feature-stream (SSE) subscribers", registry=r)
        subs.set_function(lambda: hub.subscribers)
        r.register(_Dropped(hub))

    def token(self, seconds: float | None) -> None:
        """Called from the generation thread per generated token (prometheus_client is thread-safe)."""
        self.tokens.inc()
        if seconds is not None:
            self.time_per_token.observe(seconds)

    def middleware(self):
        @web.middleware
        async def count(request: web.Request, handler):
            route = request.match_info.route.resource
            name = route.canonical if route is not None else "other"
            status = 500
            try:
                resp = await handler(request)
                status = resp.status
                return resp
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                self.requests.labels(name if not name.startswith("/{tail") else "other", str(status)).inc()

        return count

    async def handler(self, request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(self.registry))
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        resp.charset = "utf-8"
        return resp
