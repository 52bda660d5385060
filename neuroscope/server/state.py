"""What the request handlers share, passed through ``web.AppKey``s."""

from __future__ import annotations

import weakref
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from neuroscope.core.engine import Engine
from neuroscope.core.feature_hub import FeatureHub
from neuroscope.labels.chain import LabelChain
from neuroscope.server.access import Access

if TYPE_CHECKING:
    from neuroscope.explore.page import Explorer
    from neuroscope.explore.search import FeatureSearch
    from neuroscope.server.metrics import Metrics


@dataclass
class ServerState:
    engine: Engine
    hub: FeatureHub
    labels: LabelChain
    model_id: str
    backend_name: str
    sae_id: str
    default_max_tokens: int = 1024
    top_k: int | None = None
    access: Access = field(default_factory=Access)
    sae_input_norm: str = "none"
    filter_warning: str | None = None  # why no filter is in force although one was asked (no calibration found)
    chat_port: int = 0  # the bound ports, set once both are listening
    features_port: int = 0
    streams: weakref.WeakSet = field(default_factory=weakref.WeakSet)  # open SSE responses, stopped on shutdown
    aliases: tuple[str, ...] = ()  # more names the served model answers to (--served-model-name)
    max_queue: int = 64  # requests waiting behind the running one; past it, 429
    retry_after: int = 1  # seconds, in a 429's Retry-After
    body_timeout: float = 20.0  # a request body must arrive within this many seconds
    executor: Executor | None = None  # parses and tokenizes request bodies off the event loop
    metrics: "Metrics | None" = None
    shutting_down: bool = False
    explorer: "Explorer | None" = None  # feature pages
    search: "FeatureSearch | None" = None  # search over the labels


STATE = web.AppKey("neuroscope_state", ServerState)
