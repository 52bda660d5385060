"""Port 8081: the feature explorer — a feature's page, search over the labels, inspect a text.

Device work (a page's neighbours and logits the first time, an inspect's prefill) is queued to the generation
thread through ``Engine.call``, behind generations and within ``--max-queue`` like them; the event loop only
waits. Host work (search, tokenizing, reading examples) runs on the request executor.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from neuroscope.explore import inspect
from neuroscope.explore.page import PageError
from neuroscope.explore.search import SearchError
from neuroscope.server.body import read_json
from neuroscope.server.errors import APIError
from neuroscope.server.prompt import at_least_tokens, encode_text, render_prompt
from neuroscope.server.schema import parse_chat_request
from neuroscope.server.state import STATE, ServerState

MAX_BODY = 8 * 1024 * 1024


def _queue_full(st: ServerState) -> None:
    if st.engine.queued >= st.max_queue:
        raise APIError(f"the server is busy: {st.engine.queued} requests are waiting (--max-queue {st.max_queue}); "
                       "retry later", status=429, type="rate_limit_error", code="queue_full")


def _shutting_down(st: ServerState) -> None:
    if st.shutting_down:
        raise APIError("the server is shutting down", status=503, type="server_error", code="server_shutting_down")


async def _on_thread(st: ServerState, fn) -> Any:
    """Run ``fn`` on the generation thread (429 past --max-queue, 503 when the server stops first)."""
    _shutting_down(st)
    _queue_full(st)
    try:
        return await st.engine.call(fn)
    except asyncio.CancelledError:
        if st.shutting_down:
            raise APIError("the server is shutting down; the request was not completed", status=503,
                           type="server_error", code="server_shutting_down") from None
        raise


async def _off_loop(st: ServerState, fn, *args) -> Any:
    return await asyncio.get_running_loop().run_in_executor(st.executor, fn, *args)


# ------------------------------------------------------------------------------------------------ page
async def feature_page(request: web.Request) -> web.Response:
    """``GET /v1/features/{index}``: label, source, score, stats, examples, neighbours, logits."""
    st = request.app[STATE]
    ex = st.explorer
    try:
        index = ex.index(request.match_info["index"])
    except PageError as exc:
        raise APIError(str(exc), status=exc.status, param="index",
                       code="invalid_value" if exc.status == 400 else "feature_not_found") from None
    eff = ex.cached(index)
    if eff is None:
        backend = st.engine.backend
        eff = await _on_thread(st, lambda: backend.feature_effects(index))
        ex.keep(index, eff)
    return web.json_response(await _off_loop(st, ex.page, index, eff))


# ------------------------------------------------------------------------------------------------ search
async def feature_search(request: web.Request) -> web.Response:
    """``GET /v1/features/search?q=&limit=``: BM25 over the labels, a number first."""
    st = request.app[STATE]
    q, limit = request.query.get("q"), request.query.get("limit")
    try:
        hits = await _off_loop(st, st.search.search, q, limit)
    except SearchError as exc:
        raise APIError(str(exc), param=exc.param, code="invalid_value") from None
    return web.json_response({"query": q, "results": [h.to_json() for h in hits]})


# ------------------------------------------------------------------------------------------------ inspect
def _bad(message: str, param: str | None = None) -> APIError:
    return APIError(message, param=param, code="invalid_value")


def plan_inspect(st: ServerState, body: Any) -> tuple[list[int], int]:
    """The token ids to inspect and the top-k asked (off the loop: rendering and tokenizing take time)."""
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object with 'text' or 'messages'")
    unknown = sorted(set(body) - {"text", "messages", "top_k"})
    if unknown:
        raise _bad(f"unknown field {unknown[0]!r}: inspect takes 'text' or 'messages', and 'top_k'", unknown[0])
    has_text, has_messages = "text" in body, "messages" in body
    if has_text == has_messages:
        raise _bad("give exactly one of 'text' and 'messages'", "text" if has_text else None)
    k_max = st.top_k or 0
    top_k = body.get("top_k", k_max)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= k_max:
        raise _bad(f"top_k must be an integer from 1 to {k_max} (the server's --top-k), got {top_k!r}", "top_k")
    info = st.engine.info
    tok, ctx = info.tokenizer, info.context_length
    if has_text:
        text = body["text"]
        if not isinstance(text, str):
            raise _bad("'text' must be a string", "text")
        if not text:
            raise _bad("'text' is empty", "text")
        least = at_least_tokens(tok, len(text.encode("utf-8")))
        if least > ctx:
            raise _context(ctx, least, "text", at_least=True)
        ids = encode_text(tok, text)
        what = "text"
    else:
        req = parse_chat_request({"model": st.model_id, "messages": body["messages"]}, served_model=st.model_id)
        least = at_least_tokens(tok, sum(len(m["content"].encode("utf-8")) for m in req.messages))
        if least > ctx:
            raise _context(ctx, least, "messages", at_least=True)
        ids = render_prompt(tok, req.messages)
        what = "messages"
    if len(ids) > ctx:
        raise _context(ctx, len(ids), what)
    return ids, top_k


def _context(ctx: int, n: int, what: str, at_least: bool = False) -> APIError:
    take = f"at least {n}" if at_least else str(n)
    return APIError(f"This model's maximum context length is {ctx} tokens, but the {what} take {take} tokens.",
                    param=what, code="context_length_exceeded")


async def feature_inspect(request: web.Request) -> web.Response:
    """``POST /v1/features/inspect``: every position's features of a text (a prefill only) and a summary."""
    st = request.app[STATE]
    _shutting_down(st)
    _queue_full(st)
    body = await read_json(request, st.executor, max_size=MAX_BODY, timeout=st.body_timeout)
    ids, top_k = await _off_loop(st, plan_inspect, st, body)
    e = st.engine
    return web.json_response(await _on_thread(st, lambda: inspect.run(
        e.backend, e.info.tokenizer, e.labels, ids, top_k, feature_filter=e.feature_filter, special_ids=e.special_ids)))


async def inspect_method(request: web.Request) -> web.Response:
    raise APIError(f"{request.method} is not allowed on {request.path}; use POST", status=405,
                   code="method_not_allowed")


def add_explore_routes(app: web.Application) -> None:
    app.router.add_get("/v1/features/search", feature_search, allow_head=False)
    app.router.add_post("/v1/features/inspect", feature_inspect)
    app.router.add_route("*", "/v1/features/inspect", inspect_method)
    app.router.add_get("/v1/features/{index}", feature_page, allow_head=False)
