"""Port 8081: the live feature stream (SSE), the label map, what is served (info) and the viewer page."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp_sse import sse_response
from yarl import URL

from neuroscope import __version__
from neuroscope.core.feature_hub import HISTORY_REQUESTS
from neuroscope.server import access
from neuroscope.server.errors import APIError, openai_errors
from neuroscope.server.explore import MAX_BODY as EXPLORE_MAX_BODY
from neuroscope.server.explore import add_explore_routes
from neuroscope.server.origins import host_of
from neuroscope.server.state import STATE
from neuroscope.server.viewer import add_viewer_routes

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _json_error(status: int, message: str, param: str | None = None) -> web.Response:
    return APIError(message, status=status, param=param).response()


async def feature_stream(request: web.Request) -> web.StreamResponse:
    """``event: feature_activation`` per token, ``event: generation_complete`` per request.

    ``?request_id=`` keeps one request's events (replayed from its start) and ends after its completion;
    ``?include_prompt=true`` adds one event per prompt token.
    """
    st = request.app[STATE]
    include = request.query.get("include_prompt", "false").lower()
    if include not in _TRUE + _FALSE:
        return _json_error(400, f"include_prompt must be true or false, got {include!r}", "include_prompt")
    request_id = request.query.get("request_id") or None
    if request_id is not None and not st.hub.knows(request_id):
        return _json_error(404, f"unknown request_id {request_id!r}: not queued, running or among the last "
                                f"{HISTORY_REQUESTS} requests", "request_id")
    sub = st.hub.subscribe(request_id=request_id, include_prompt=include in _TRUE)
    try:
        async with sse_response(request) as resp:
            st.streams.add(resp)
            while resp.is_connected():
                event = await sub.get()
                if event is None:
                    break
                await resp.send(json.dumps(event["data"], ensure_ascii=False), event=event["event"])
                if request_id is not None and event["event"] == "generation_complete":
                    break
        return resp
    except ConnectionResetError:  # the subscriber went away
        return web.Response(status=499)
    finally:
        st.hub.unsubscribe(sub)


async def labels(request: web.Request) -> web.Response:
    """The merged label map; ``?detail=true`` gives each feature's label, source, score and low_confidence."""
    st = request.app[STATE]
    lab = st.labels
    detail = request.query.get("detail", "false").lower()
    if detail not in _TRUE + _FALSE:
        return _json_error(400, f"detail must be true or false, got {detail!r}", "detail")
    if detail in _TRUE:
        return web.json_response(lab.detail())
    return web.json_response(
        {"source": lab.source, "count": len(lab), "named": lab.named, "labels": lab.as_dict()}
    )


def labels_info(lab) -> dict:
    """Where the labels come from: the map's source, how many each source gives, the Neuronpedia source."""
    np_info = lab.neuronpedia
    neuronpedia: dict = {"model_id": None, "source_id": None, "skipped": np_info.skipped}
    if np_info.ids is not None:
        neuronpedia.update(model_id=np_info.ids.model_id, source_id=np_info.ids.source_id)
        if np_info.lazy is not None:
            neuronpedia.update(np_info.lazy.status())
    return {"source": lab.source, "named": lab.named, "sources": lab.counts(), "threshold": lab.threshold,
            "neuronpedia": neuronpedia, "warnings": lab.warnings}


async def health(request: web.Request) -> web.Response:
    """Liveness and counts only: it needs no API key, so it says nothing of who follows which request."""
    hub = request.app[STATE].hub
    return web.json_response(
        {"status": "ok", "subscribers": hub.subscribers, "published": hub.published, "dropped": hub.dropped}
    )


async def info(request: web.Request) -> web.Response:
    """What is served, and where the chat API is: the viewer learns the chat address from here. It is the
    address the browser used for this port (the Host header) with the chat port, never a hard-coded one."""
    st = request.app[STATE]
    host = host_of(request.host)
    if host is None:  # a malformed Host header (answered on a public bind): the address this server listens on
        host = st.access.bind_host.strip("[]")
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    chat = URL.build(scheme=request.scheme, host=host, port=st.chat_port, path="/v1")
    stream = URL.build(scheme=request.scheme, host=host, port=st.features_port, path="/v1/features/stream")
    return web.json_response(
        {
            "model": st.model_id,
            "backend": st.backend_name,
            "sae": st.sae_id,
            "layer": st.engine.layer,
            "d_sae": len(st.labels),
            "sae_input_norm": st.sae_input_norm,
            "top_k": st.top_k,
            "filter": _filter_info(st),
            "labels": labels_info(st.labels),
            "chat_url": str(chat),
            "stream_url": str(stream),
            "default_max_tokens": st.default_max_tokens,
            "api_key_required": st.access.api_key is not None,
            "version": __version__,
        }
    )


def _filter_info(st) -> dict:
    """The feature filter in force: mode, threshold (frequency / combined), calibration file, and why none is
    in force when a calibration was not found."""
    flt = st.engine.feature_filter
    mode = flt.mode if flt is not None else "none"
    return {
        "mode": mode,
        "threshold": flt.threshold if flt is not None and mode in ("frequency", "combined") else None,
        "calibration": flt.calibration if flt is not None else None,
        "warning": st.filter_warning,
    }


async def not_found(request: web.Request) -> web.Response:
    return _json_error(404, f"no route {request.method} {request.path} on this port "
                            "(GET / for the viewer, GET /v1/features/stream, /v1/features/labels, /v1/features/info, "
                            "/v1/features/search, /v1/features/{index}, POST /v1/features/inspect)")


def make_features_app(state) -> web.Application:
    app = web.Application(middlewares=[openai_errors], client_max_size=EXPLORE_MAX_BODY)
    app[STATE] = state
    public = add_viewer_routes(app)
    access.install(app, state.access, public_paths=public, query_key=True)
    app.router.add_get("/v1/features/stream", feature_stream)
    app.router.add_get("/v1/features/labels", labels)
    app.router.add_get("/v1/features/info", info)
    add_explore_routes(app)
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
