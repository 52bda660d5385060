"""Loopback fakes of an OpenAI-compatible chat-completions server and of Anthropic's Messages API, speaking their
wire formats (structured output via ``response_format`` json_schema; a forced ``tool_use`` block), with faults
injected per request: 429 + Retry-After, 500 / 529, a hang past the client's timeout, a malformed answer, an
undecodable body, 401."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
from typing import Any, Callable

from aiohttp import web
from multidict import CIMultiDict

KEY = "sk-test-9f8e7d6c5b4a-secret"
WINDOW_LINE = re.compile(r"^\d+\. ", re.M)


def label_for(system: str, user: str) -> str:
    """What the fake labeler answers: names the prompt it saw (so a test can match answers to requests)."""
    return "seen " + hashlib.sha256(f"{system}\n\n{user}".encode()).hexdigest()[:12]


class FakeLLM:
    def __init__(self, kind: str = "openai", key: str = KEY):
        assert kind in ("openai", "anthropic")
        self.kind, self.key = kind, key
        self.faults: list[str] = []  # consumed one per request, in order
        self.unknown_model: str | None = None  # requests naming it get a 400
        self.delay = 0.0  # seconds each answer takes
        self.block_after: int | None = None  # answer this many, then hold every later request open
        self.detect: Callable[[str, list[str]], list[int]] | None = None  # (user prompt, windows) -> answers
        self.requests: list[dict[str, Any]] = []
        self.answered = 0
        self.active = 0
        self.max_active = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> FakeLLM:
        ready = threading.Event()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            self._release = asyncio.Event()
            app = web.Application()
            app.router.add_post("/v1/chat/completions" if self.kind == "openai" else "/v1/messages", self._handle)
            self._runner = web.AppRunner(app)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            port = site._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}" + ("/v1" if self.kind == "openai" else "")
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._release.set)
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        try:
            fut.result(10)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -------------------------------------------------------------------------------------------- requests
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"headers": CIMultiDict(request.headers), "body": body})  # any case
        fault = self.faults.pop(0) if self.faults else None
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.block_after is not None and self.answered >= self.block_after:
                await self._release.wait()  # held open until the fake stops
            if fault == "hang":  # longer than the client's timeout
                try:
                    await asyncio.wait_for(self._release.wait(), 5)
                except asyncio.TimeoutError:
                    pass
            if self.delay:
                await asyncio.sleep(self.delay)
            if not self._authorised(request) or fault == "401":
                return self._error(401, "authentication_error", f"Incorrect API key provided: {self._given(request)}")
            if fault == "400" or body.get("model") == self.unknown_model:  # OpenRouter's answer to a bad model id
                return self._error(400, "invalid_request_error", f"{body.get('model')} is not a valid model ID")
            if fault == "429":
                return self._error(429, "rate_limit_error", "Rate limit reached", {"Retry-After": "0"})
            if fault in ("500", "529"):
                return self._error(int(fault), "overloaded_error" if fault == "529" else "server_error", "try again")
            if fault == "badjson":
                return web.Response(status=200, text="<html>upstream error</html>", content_type="text/html")
            answer = self._answer(body)
            if fault == "malformed":
                answer = None
            self.answered += 1
            return web.json_response(self._envelope(body, answer))
        finally:
            self.active -= 1

    def _given(self, request: web.Request) -> str:
        if self.kind == "anthropic":
            return request.headers.get("x-api-key", "")
        return request.headers.get("Authorization", "").removeprefix("Bearer ")

    def _authorised(self, request: web.Request) -> bool:
        if self.kind == "anthropic" and not request.headers.get("anthropic-version"):
            return False
        return self._given(request) == self.key

    def _error(self, status: int, kind: str, message: str, headers: dict | None = None) -> web.Response:
        if self.kind == "anthropic":
            payload = {"type": "error", "error": {"type": kind, "message": message}}
        else:
            payload = {"error": {"message": message, "type": kind, "code": None}}
        return web.json_response(payload, status=status, headers=headers)

    def _prompt(self, body: dict) -> tuple[str, str, str]:
        """(schema name, system text, user text) of a request."""
        if self.kind == "anthropic":
            return body["tool_choice"]["name"], body["system"], body["messages"][0]["content"]
        msgs = {m["role"]: m["content"] for m in body["messages"]}
        return body["response_format"]["json_schema"]["name"], msgs["system"], msgs["user"]

    def _answer(self, body: dict) -> dict:
        name, system, user = self._prompt(body)
        if name == "feature_label":
            return {"label": label_for(system, user), "description": "Fires where the fake says it does."}
        windows = [line.split(". ", 1)[1] for line in user.splitlines() if WINDOW_LINE.match(line)]
        answers = self.detect(user, windows) if self.detect else [1] * len(windows)
        return {"matches": answers}

    def _envelope(self, body: dict, answer: dict | None) -> dict:
        name, _, user = self._prompt(body)
        prompt_tokens, out_tokens = len(user) // 4, 9
        if self.kind == "anthropic":
            content = ([{"type": "tool_use", "id": "toolu_01", "name": name, "input": answer}] if answer is not None
                       else [{"type": "text", "text": "I think the label is: tokens"}])
            return {"id": "msg_01", "type": "message", "role": "assistant", "model": body["model"],
                    "content": content, "stop_reason": "tool_use", "stop_sequence": None,
                    "usage": {"input_tokens": prompt_tokens, "output_tokens": out_tokens}}
        text = json.dumps(answer) if answer is not None else '{"label": "unterminated'
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": out_tokens,
                          "total_tokens": prompt_tokens + out_tokens}}
