"""What the request handlers share, passed through ``web.AppKey``s."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from aiohttp import web

from neuroscope.engine import Engine
from neuroscope.feature_hub import FeatureHub
from neuroscope.labels import Labels
from neuroscope.server.access import Access


@dataclass
class ServerState:
    engine: Engine
    hub: FeatureHub
    labels: Labels
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


STATE = web.AppKey("neuroscope_state", ServerState)
