"""Port 8080: the OpenAI-compatible API — chat completions, raw-text completions, models, health, metrics.

Both generation endpoints share one path: read the body (off the loop), parse and tokenize (off the loop),
queue the job (429 past ``--max-queue``), then answer as JSON or as an SSE stream. Only the request schema, the
prompt's tokenization and the response shapes differ (:class:`Shape`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, Callable

from aiohttp import web
from aiohttp_sse import sse_response

from neuroscope.core.jobs import Chunk, Done, Job, TokenLogprob
from neuroscope.core.protocol import GenerationParams
from neuroscope.server import access
from neuroscope.server.body import read_json
from neuroscope.server.errors import REQUEST_ID, APIError, openai_errors
from neuroscope.server.prompt import at_least_tokens, encode_text, render_prompt
from neuroscope.server.schema import (
    ChatRequest,
    CompletionRequest,
    SamplingRequest,
    parse_chat_request,
    parse_completion_request,
    served_names,
)
from neuroscope.server.state import STATE, ServerState

MAX_BODY = 8 * 1024 * 1024


# ------------------------------------------------------------------------------------------------ models, health
def _model_card(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "neuroscope"}


async def list_models(request: web.Request) -> web.Response:
    st = request.app[STATE]
    return web.json_response({"object": "list", "data": [_model_card(st.model_id)]})


async def get_model(request: web.Request) -> web.Response:
    """``GET /v1/models/{id}``: any name the server answers to (ids with a slash work unencoded too)."""
    st = request.app[STATE]
    name = request.match_info["model"]
    if name not in served_names(st.model_id, st.aliases):
        raise APIError(f"The model '{name}' does not exist; this server serves '{st.model_id}'", status=404,
                       param="model", code="model_not_found")
    return web.json_response(_model_card(st.model_id))


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
            "running": len(st.engine.running),
            "last_batch": st.engine.last_batch,
            "max_batch": st.engine.max_batch,
            "max_context": st.engine.max_context,
            "completed": st.engine.completed,
        }
    )


# ------------------------------------------------------------------------------------------------ planning
def _limit(st: ServerState) -> str:
    """OpenAI's wording of the context limit; under ``--max-context`` it says the limit is the server's."""
    ctx, model = st.engine.max_context, st.engine.info.context_length
    if ctx < model:
        return f"This server's maximum context length is {ctx} tokens (--max-context; the model's is {model})"
    return f"This model's maximum context length is {ctx} tokens"


def _context_error(st: ServerState, n: int, what: str, at_least: bool = False) -> APIError:
    take = f"at least {n}" if at_least else str(n)
    return APIError(f"{_limit(st)}, but the {what} take {take} tokens.", param=what, code="context_length_exceeded")


def _plan(st: ServerState, req: SamplingRequest, prompt_ids: list[int], what: str, request_id: str) -> Job:
    ctx = st.engine.max_context  # the model's context length, or less under --max-context
    n = len(prompt_ids)
    if n >= ctx:
        raise _context_error(st, n, what)
    room = ctx - n
    if req.max_tokens is None:
        max_tokens = min(st.default_max_tokens, room)
    elif req.max_tokens > room:
        raise APIError(
            f"{_limit(st)}. However, you requested {n + req.max_tokens} "
            f"tokens ({n} in the {what}, {req.max_tokens} in the completion).",
            param="max_tokens", code="context_length_exceeded",
        )
    else:
        max_tokens = req.max_tokens
    params = GenerationParams(
        max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed, steering=req.steering,
        logit_bias=req.logit_bias, presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
        logprobs=req.logprobs,
    )
    return Job(prompt_ids=prompt_ids, params=params, stop=req.stop, request_id=request_id)


def _too_long(st: ServerState, texts: list[str], what: str) -> None:
    """Refuse text that cannot fit before tokenizing it (a body near the size limit tokenizes slowly and
    allocates far more than its size)."""
    ctx = st.engine.max_context
    least = at_least_tokens(st.engine.info.tokenizer, sum(len(t.encode("utf-8")) for t in texts))
    if least >= ctx:
        raise _context_error(st, least, what, at_least=True)


def plan_chat(st: ServerState, body: Any) -> tuple[ChatRequest, Job]:
    req = parse_chat_request(body, served_model=st.model_id, aliases=st.aliases, d_sae=st.labels.d_sae,
                             n_logits=st.engine.info.vocab_size)
    _too_long(st, [m["content"] for m in req.messages], "messages")
    ids = render_prompt(st.engine.info.tokenizer, req.messages)
    return req, _plan(st, req, ids, "messages", f"chatcmpl-{uuid.uuid4().hex[:24]}")


def plan_completion(st: ServerState, body: Any) -> tuple[CompletionRequest, Job]:
    tok = st.engine.info.tokenizer
    req = parse_completion_request(body, served_model=st.model_id, aliases=st.aliases, d_sae=st.labels.d_sae,
                                   vocab_size=len(tok), n_logits=st.engine.info.vocab_size)
    if isinstance(req.prompt, str):
        _too_long(st, [req.prompt], "prompt")
        ids = encode_text(tok, req.prompt)
    else:
        ids = list(req.prompt)
    return req, _plan(st, req, ids, "prompt", f"cmpl-{uuid.uuid4().hex[:24]}")


# ------------------------------------------------------------------------------------------------ response shapes
class Shape:
    """The OpenAI wire shapes of one endpoint. ``lps``: the tokens' logprobs, None when the request did not ask."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def logprobs(self, lps: list[TokenLogprob] | None) -> dict | None:
        if lps is None:
            return None
        return {"content": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes,
                             "top_logprobs": [{"token": s, "logprob": lp, "bytes": b} for s, lp, b in t.top]}
                            for t in lps], "refusal": None}

    def choice(self, text: str, finish: str, lps: list[TokenLogprob] | None = None) -> dict:
        return {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": self.logprobs(lps), "finish_reason": finish}

    def first_delta(self) -> dict | None:
        return {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}

    def delta(self, text: str, finish: str | None = None, lps: list[TokenLogprob] | None = None) -> dict:
        return {"index": 0, "delta": {"content": text} if text or finish is None else {},
                "logprobs": self.logprobs(lps), "finish_reason": finish}


class CompletionShape(Shape):
    object = chunk_object = "text_completion"

    def logprobs(self, lps: list[TokenLogprob] | None) -> dict | None:
        if lps is None:
            return None
        return {"tokens": [t.token for t in lps], "token_logprobs": [t.logprob for t in lps],
                "top_logprobs": [_by_text(t.top) for t in lps],
                "text_offset": [t.offset for t in lps]}

    def choice(self, text: str, finish: str, lps: list[TokenLogprob] | None = None) -> dict:
        return {"index": 0, "text": text, "logprobs": self.logprobs(lps), "finish_reason": finish}

    def first_delta(self) -> dict | None:
        return None

    def delta(self, text: str, finish: str | None = None, lps: list[TokenLogprob] | None = None) -> dict:
        return self.choice(text, finish, lps)


def _by_text(top) -> dict[str, float]:
    """The completions endpoint's ``{token: logprob}``, most likely first (two ids with one text: the likelier)."""
    out: dict[str, float] = {}
    for s, lp, _ in top:
        out.setdefault(s, lp)
    return out


CHAT, COMPLETION = Shape(), CompletionShape()


# ------------------------------------------------------------------------------------------------ the shared path
async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, plan_chat, CHAT)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, plan_completion, COMPLETION)


def _queue_full(st: ServerState) -> APIError | None:
    if st.engine.queued < st.max_queue:
        return None
    return APIError(f"the server is busy: {st.engine.queued} requests are waiting (--max-queue {st.max_queue}); "
                    "retry later", status=429, type="rate_limit_error", code="queue_full")


async def _generate(request: web.Request, plan: Callable, shape: Shape) -> web.StreamResponse:
    st = request.app[STATE]
    if st.shutting_down:
        raise _shutting_down()
    full = _queue_full(st)
    if full is not None:
        return full.response({"Retry-After": str(st.retry_after)})
    body = await read_json(request, st.executor, max_size=MAX_BODY, timeout=st.body_timeout)
    req, job = await asyncio.get_running_loop().run_in_executor(st.executor, plan, st, body)
    request[REQUEST_ID] = job.request_id
    full = _queue_full(st)  # others may have been queued while this one was parsed
    if full is not None:
        return full.response({"Retry-After": str(st.retry_after)})
    st.hub.open_request(job.request_id)
    out = st.engine.submit(job)
    try:
        if req.stream:
            return await _stream_or_gone(request, st, req, job, out, shape)
        return await _collect(st, req, job, out, shape)
    finally:
        if job.finish_reason is None:  # client went away (handler cancelled) or we failed: stop generating
            job.cancel()


def _shutting_down() -> APIError:
    return APIError("the server is shutting down; the request was not completed", status=503, type="server_error",
                    code="server_shutting_down")


def _failure(st: ServerState, done: Done) -> APIError | None:
    if done.error:
        return APIError(done.error, status=500, type="server_error", code="generation_failed")
    if done.finish_reason == "cancelled" and st.shutting_down:
        return _shutting_down()
    return None


def _usage(done: Done) -> dict:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


async def _collect(st: ServerState, req: SamplingRequest, job: Job, out: asyncio.Queue, shape: Shape) -> web.Response:
    parts: list[str] = []
    lps: list[TokenLogprob] | None = None if req.logprobs is None else []
    while True:
        item = await out.get()
        if isinstance(item, Chunk):
            parts.append(item.text)
            if lps is not None:
                lps.extend(item.logprobs)
            continue
        break
    done: Done = item
    failure = _failure(st, done)
    if failure is not None:
        raise failure
    return web.json_response(
        {
            "id": job.request_id,
            "object": shape.object,
            "created": job.created,
            "model": st.model_id,
            "system_fingerprint": None,
            "choices": [shape.choice("".join(parts), done.finish_reason, lps)],
            "usage": _usage(done),
        },
        headers={"X-Request-Id": job.request_id},
    )


async def _stream(request: web.Request, st: ServerState, req: SamplingRequest, job: Job, out: asyncio.Queue,
                  shape: Shape):
    base = {"id": job.request_id, "object": shape.chunk_object, "created": job.created, "model": st.model_id,
            "system_fingerprint": None}

    def chunk(choice: dict) -> str:
        c = {**base, "choices": [choice]}
        if req.include_usage:
            c["usage"] = None
        return json.dumps(c)

    # the headers (with X-Request-Id) go out now, while the job may still be queued
    async with sse_response(
        request, headers={"X-Request-Id": job.request_id}, sep="\n", allow_all_methods=True
    ) as resp:
        st.streams.add(resp)
        first = shape.first_delta()
        if first is not None:
            await resp.send(chunk(first))
        while True:
            item = await out.get()
            if isinstance(item, Chunk):
                await resp.send(chunk(shape.delta(item.text, None,
                                                  None if req.logprobs is None else list(item.logprobs))))
                continue
            done: Done = item
            break
        failure = _failure(st, done)
        if failure is not None:
            await resp.send(json.dumps(failure.body()))
        else:
            await resp.send(chunk(shape.delta("", done.finish_reason)))
            if req.include_usage:
                await resp.send(json.dumps({**base, "choices": [], "usage": _usage(done)}))
        await resp.send("[DONE]")
    return resp


async def _stream_or_gone(request, st, req, job, out, shape):
    """The client may go away mid-stream: that ends the request (its job is cancelled by the caller)."""
    try:
        return await _stream(request, st, req, job, out, shape)
    except ConnectionResetError:
        return web.Response(status=499)


# ------------------------------------------------------------------------------------------------ routes
_ROUTES = {"/v1/chat/completions": "POST", "/v1/completions": "POST", "/v1/models": "GET", "/health": "GET",
           "/metrics": "GET"}


async def not_found(request: web.Request) -> web.Response:
    if request.path in _ROUTES or request.path.startswith("/v1/models/"):
        allowed = _ROUTES.get(request.path, "GET")
        raise APIError(f"{request.method} is not allowed on {request.path}; use {allowed}",
                       status=405, code="method_not_allowed")
    raise APIError(f"no route {request.method} {request.path} on this port (chat API: POST /v1/chat/completions, "
                   "POST /v1/completions, GET /v1/models, GET /metrics)", status=404, code="not_found")


def make_chat_app(state: ServerState) -> web.Application:
    middlewares = [openai_errors] if state.metrics is None else [state.metrics.middleware(), openai_errors]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[STATE] = state
    access.install(app, state.access)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", list_models, allow_head=False)
    app.router.add_get("/v1/models/{model:.+}", get_model, allow_head=False)
    app.router.add_get("/health", health, allow_head=False)
    if state.metrics is not None:
        app.router.add_get("/metrics", state.metrics.handler, allow_head=False)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
