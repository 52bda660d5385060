"""Port 8080: the OpenAI-compatible chat API."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from aiohttp_sse import sse_response

from neuroscope.engine import Chunk, Done, Job
from neuroscope.protocol import GenerationParams
from neuroscope.server import access
from neuroscope.server.errors import APIError, openai_errors
from neuroscope.server.prompt import render_prompt
from neuroscope.server.schema import ChatRequest, parse_chat_request
from neuroscope.server.state import STATE, ServerState

MAX_BODY = 8 * 1024 * 1024


async def list_models(request: web.Request) -> web.Response:
    st = request.app[STATE]
    return web.json_response(
        {
            "object": "list",
            "data": [{"id": st.model_id, "object": "model", "created": 0, "owned_by": "neuroscope"}],
        }
    )


async def health(request: web.Request) -> web.Response:
    st = request.app[STATE]
    return web.json_response(
        {
            "status": "ok",
            "model": st.model_id,
            "backend": st.backend_name,
            "sae": st.sae_id,
            "sae_dtype": st.engine.info.sae_dtype,
            "queued": st.engine.queued,
            "completed": st.engine.completed,
        }
    )


def _plan(st: ServerState, req: ChatRequest) -> Job:
    info = st.engine.info
    prompt_ids = render_prompt(info.tokenizer, req.messages)
    ctx = info.context_length
    n = len(prompt_ids)
    if n >= ctx:
        raise APIError(
            f"This model's maximum context length is {ctx} tokens, but the messages take {n} tokens.",
            param="messages", code="context_length_exceeded",
        )
    room = ctx - n
    if req.max_tokens is None:
        max_tokens = min(st.default_max_tokens, room)
    elif req.max_tokens > room:
        raise APIError(
            f"This model's maximum context length is {ctx} tokens. However, you requested {n + req.max_tokens} "
            f"tokens ({n} in the messages, {req.max_tokens} in the completion).",
            param="max_tokens", code="context_length_exceeded",
        )
    else:
        max_tokens = req.max_tokens
    params = GenerationParams(
        max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed, steering=req.steering
    )
    return Job(prompt_ids=prompt_ids, params=params, stop=req.stop)


def _unsupported_media_type(got: str | None) -> APIError:
    said = f"it was sent as {got!r}" if got else "it was sent without a Content-Type"
    return APIError(f"the request body must be JSON sent with 'Content-Type: application/json'; {said}",
                    status=415, code="unsupported_media_type")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    if request.content_type != "application/json":  # a cross-site form or text/plain POST cannot make us generate
        raise _unsupported_media_type(request.headers.get("Content-Type"))
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    req = parse_chat_request(body, served_model=st.model_id, d_sae=st.labels.d_sae)
    job = _plan(st, req)
    st.hub.open_request(job.request_id)
    out = st.engine.submit(job)
    try:
        if req.stream:
            return await _stream_or_gone(request, st, req, job, out)
        return await _collect(st, req, job, out)
    finally:
        if job.finish_reason is None:  # client went away (handler cancelled) or we failed: stop generating
            job.cancel()


def _usage(done: Done) -> dict:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


async def _collect(st: ServerState, req: ChatRequest, job: Job, out: asyncio.Queue) -> web.Response:
    parts: list[str] = []
    while True:
        item = await out.get()
        if isinstance(item, Chunk):
            parts.append(item.text)
            continue
        break
    done: Done = item
    headers = {"X-Request-Id": job.request_id}
    if done.error:
        raise APIError(done.error, status=500, type="server_error", code="generation_failed")
    return web.json_response(
        {
            "id": job.request_id,
            "object": "chat.completion",
            "created": job.created,
            "model": st.model_id,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(parts), "refusal": None},
                    "logprobs": None,
                    "finish_reason": done.finish_reason,
                }
            ],
            "usage": _usage(done),
        },
        headers=headers,
    )


async def _stream(request: web.Request, st: ServerState, req: ChatRequest, job: Job, out: asyncio.Queue):
    base = {"id": job.request_id, "object": "chat.completion.chunk", "created": job.created, "model": st.model_id,
            "system_fingerprint": None}

    def chunk(delta: dict, finish: str | None = None) -> str:
        c = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if req.include_usage:
            c["usage"] = None
        return json.dumps(c)

    async with sse_response(
        request, headers={"X-Request-Id": job.request_id}, sep="\n", allow_all_methods=True
    ) as resp:
        st.streams.add(resp)
        await resp.send(chunk({"role": "assistant", "content": ""}))
        while True:
            item = await out.get()
            if isinstance(item, Chunk):
                await resp.send(chunk({"content": item.text}))
                continue
            done: Done = item
            break
        if done.error:
            err = APIError(done.error, status=500, type="server_error", code="generation_failed")
            await resp.send(json.dumps(err.body()))
        else:
            await resp.send(chunk({}, done.finish_reason))
            if req.include_usage:
                await resp.send(json.dumps({**base, "choices": [], "usage": _usage(done)}))
        await resp.send("[DONE]")
    return resp


async def _stream_or_gone(request, st, req, job, out):
    """The client may go away mid-stream: that ends the request (its job is cancelled by the caller)."""
    try:
        return await _stream(request, st, req, job, out)
    except ConnectionResetError:
        return web.Response(status=499)


_ROUTES = {"/v1/chat/completions": "POST", "/v1/models": "GET", "/health": "GET"}


async def not_found(request: web.Request) -> web.Response:
    if request.path in _ROUTES:
        raise APIError(f"{request.method} is not allowed on {request.path}; use {_ROUTES[request.path]}",
                       status=405, code="method_not_allowed")
    raise APIError(f"no route {request.method} {request.path} on this port (chat API: POST /v1/chat/completions, "
                   "GET /v1/models)", status=404, code="not_found")


def make_chat_app(state: ServerState) -> web.Application:
    app = web.Application(middlewares=[openai_errors], client_max_size=MAX_BODY)
    app[STATE] = state
    access.install(app, state.access)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
