"""The LLM client of labelling and scoring: one structured (JSON-schema) answer per call, over aiohttp.

Two wire formats:

* **OpenAI-compatible** chat completions (OpenRouter, or any server at a base URL): ``POST {base}/chat/completions``
  with ``Authorization: Bearer``, ``response_format: {"type": "json_schema", "json_schema": {"name", "strict",
  "schema"}}``; the answer is ``choices[0].message.content`` (a JSON string), ``usage.prompt_tokens`` /
  ``completion_tokens``.
* **Anthropic** Messages: ``POST {base}/v1/messages`` with ``x-api-key`` and ``anthropic-version``; the schema is
  the ``input_schema`` of one tool the model is forced to call (``tool_choice: {"type": "tool"}``); the answer is
  that ``tool_use`` content block's ``input``, ``usage.input_tokens`` / ``output_tokens``.

Failures: 429 waits ``Retry-After`` (else backoff), 5xx / 529 / timeouts / dropped connections back off
exponentially with jitter; both are retried up to ``max_retries`` times. 401 / 403 (the key) and 404 (the model
or endpoint) stop the whole job, and so does a backend that cannot be reached (connection refused, unknown host)
before any answer: after the first one no request is sent; so do the first
``REFUSALS_BEFORE_ANY_ANSWER`` other 4xx refusals when no request has been answered yet (an unknown model id is a
400 on OpenRouter). Once answers have come, another 4xx fails that feature only. A 200 whose body or JSON does not
match the schema is asked again (``malformed_retries``), then reported as :class:`MalformedAnswer`. The API key
is never part of a message: every text that leaves this module has it replaced.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import aiohttp

from neuroscope.labels import retrying

OPENROUTER_BASE = "https://openrouter.ai/api/v1"
ANTHROPIC_BASE = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
BACKENDS = ("auto", "openrouter", "anthropic")
BACKOFF_BASE_S = 1.0  # first retry after ~1 s, doubling, with jitter
BACKOFF_CAP_S = 60.0
RETRY_AFTER_CAP_S = 300.0
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_RETRIES = 6
MALFORMED_RETRIES = 2
# refusals (a 4xx other than 401/403/404/429) before any answer at all: the request itself is wrong for this
# backend (OpenRouter answers an unknown model id with 400), so stop rather than fail every feature one by one
REFUSALS_BEFORE_ANY_ANSWER = 5
MAX_OUTPUT_TOKENS = 1024


class LLMError(RuntimeError):
    """One feature's call failed; the message is one line without the key."""


class FatalLLMError(LLMError):
    """The job cannot go on (the key was refused, the model does not exist): stop at once."""


class MalformedAnswer(LLMError):
    """The answer did not match the schema, after the retries."""


@dataclass(frozen=True)
class Provider:
    kind: str  # "openai" (chat completions) or "anthropic" (messages)
    name: str  # openrouter, anthropic, or the base URL
    base_url: str
    api_key: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        return f"{base}/v1/messages" if self.kind == "anthropic" else f"{base}/chat/completions"

    def headers(self) -> dict[str, str]:
        h = {"content-type": "application/json"}
        if self.kind == "anthropic":
            h["anthropic-version"] = ANTHROPIC_VERSION
            if self.api_key:
                h["x-api-key"] = self.api_key
        elif self.api_key:
            h["authorization"] = f"Bearer {self.api_key}"
        if self.name == "openrouter":
            h["x-title"] = "Neuroscope"  # OpenRouter's optional app attribution
        return h


def resolve_provider(backend: str, env: Mapping[str, str] | None = None) -> Provider:
    """``auto`` (OpenRouter when OPENROUTER_API_KEY is set, else Anthropic), ``openrouter``, ``anthropic``, or the
    base URL of any OpenAI-compatible server (key from LABELER_API_KEY when set). Raises :class:`FatalLLMError`."""
    env = os.environ if env is None else env
    choice = backend.strip()
    if choice == "auto":
        if env.get("OPENROUTER_API_KEY"):
            choice = "openrouter"
        elif env.get("ANTHROPIC_API_KEY"):
            choice = "anthropic"
        else:
            raise FatalLLMError("no labeler key: set OPENROUTER_API_KEY or ANTHROPIC_API_KEY, or pass "
                                "--labeler-backend with the base URL of an OpenAI-compatible server")
    if choice == "openrouter":
        key = env.get("OPENROUTER_API_KEY")
        if not key:
            raise FatalLLMError("--labeler-backend openrouter needs OPENROUTER_API_KEY")
        return Provider("openai", "openrouter", env.get("OPENROUTER_BASE_URL") or OPENROUTER_BASE, key)
    if choice == "anthropic":
        key = env.get("ANTHROPIC_API_KEY")
        if not key:
            raise FatalLLMError("--labeler-backend anthropic needs ANTHROPIC_API_KEY")
        return Provider("anthropic", "anthropic", env.get("ANTHROPIC_BASE_URL") or ANTHROPIC_BASE, key)
    if choice.startswith(("http://", "https://")) and len(choice) > len("https://"):
        return Provider("openai", choice, choice, env.get("LABELER_API_KEY") or None)
    raise FatalLLMError(f"unknown --labeler-backend {backend!r}: auto, openrouter, anthropic or an http(s):// base URL")


@dataclass(frozen=True)
class Answer:
    data: dict[str, Any]
    input_tokens: int
    output_tokens: int


class _Malformed(Exception):
    def __init__(self, message: str, tokens: tuple[int, int] = (0, 0)):
        super().__init__(message)
        self.tokens = tokens


class LLMClient:
    """A session, a concurrency limit and the counters a progress bar shows. Use ``async with``."""

    def __init__(self, provider: Provider, model: str, *, concurrency: int = 50,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_retries: int = DEFAULT_MAX_RETRIES,
                 malformed_retries: int = MALFORMED_RETRIES, backoff_base_s: float | None = None):
        if concurrency < 1:
            raise ValueError(f"--concurrency must be at least 1, got {concurrency}")
        self.provider, self.model = provider, model
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.max_retries, self.malformed_retries = max_retries, malformed_retries
        self.backoff_base_s = BACKOFF_BASE_S if backoff_base_s is None else backoff_base_s
        self.in_flight = 0
        self.requests = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.fatal: FatalLLMError | None = None
        self.answered = 0  # 200s
        self.refused = 0  # other 4xx refusals
        self._sem: asyncio.Semaphore | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LLMClient:
        self._sem = asyncio.Semaphore(self.concurrency)
        # as many connections as requests in flight (aiohttp's default pool stops at 100)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                              connector=aiohttp.TCPConnector(limit=self.concurrency))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def redact(self, text: str) -> str:
        key = self.provider.api_key
        text = " ".join(str(text).split())
        if key:
            text = text.replace(key, "[key]")
        return text[:300]

    # ------------------------------------------------------------------------------------------ requests
    def body(self, system: str, user: str, schema: dict, name: str) -> dict[str, Any]:
        if self.provider.kind == "anthropic":
            return {
                "model": self.model, "max_tokens": MAX_OUTPUT_TOKENS, "temperature": 0, "system": system,
                "messages": [{"role": "user", "content": user}],
                "tools": [{"name": name, "description": "Record the answer.", "input_schema": schema}],
                "tool_choice": {"type": "tool", "name": name},
            }
        return {
            "model": self.model, "max_tokens": MAX_OUTPUT_TOKENS, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "response_format": {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}},
        }

    def _parse(self, payload: Any, name: str) -> tuple[dict[str, Any], int, int]:
        """The answer object and the token counts of a 200 body (raises _Malformed)."""
        if not isinstance(payload, dict):
            raise _Malformed("the body is not a JSON object")
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        if self.provider.kind == "anthropic":
            tin, tout = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
            blocks = payload.get("content")
            data = next((b.get("input") for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"
                         and b.get("name") == name), None) if isinstance(blocks, list) else None
        else:
            tin, tout = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
            try:
                message = payload["choices"][0]["message"]
                content = message.get("content")
                data = json.loads(content) if isinstance(content, str) else None
            except (KeyError, IndexError, TypeError, AttributeError, ValueError):
                data = None
        counts = (int(tin) if isinstance(tin, int) else 0, int(tout) if isinstance(tout, int) else 0)
        if not isinstance(data, dict):
            raise _Malformed("the answer holds no JSON object", counts)
        return data, *counts

    async def ask(self, system: str, user: str, schema: dict, name: str,
                  check: Callable[[dict[str, Any]], Any]) -> tuple[Any, Answer]:
        """One structured answer: ``check(data)`` turns it into the caller's value or raises ValueError (a
        malformed answer, asked again). Returns (that value, the answer with the tokens of every try)."""
        body = self.body(system, user, schema, name)
        tin = tout = malformed = 0
        while True:
            payload = await self._post(body)
            i = o = 0
            problem = None
            try:
                data, i, o = self._parse(payload, name)
                value = check(data)
            except _Malformed as exc:
                problem, (i, o) = str(exc), exc.tokens
            except ValueError as exc:
                problem = str(exc)
            tin, tout = tin + i, tout + o
            self.input_tokens += i
            self.output_tokens += o
            if problem is None:
                return value, Answer(data, tin, tout)
            malformed += 1
            if malformed > self.malformed_retries:
                raise MalformedAnswer(f"malformed answer after {malformed} tries: {self.redact(problem)}")

    async def _post(self, body: dict[str, Any]) -> Any:
        """POST with the retry policy; returns the decoded JSON of a 200 (or a marker for an undecodable one)."""
        assert self._session is not None and self._sem is not None, "use LLMClient inside `async with`"
        attempt = 0
        while True:
            self._check_fatal()
            wait: float | None = None
            async with self._sem:
                self._check_fatal()
                self.in_flight += 1
                self.requests += 1
                try:
                    async with self._session.post(self.provider.url, json=body,
                                                  headers=self.provider.headers()) as resp:
                        status, text = resp.status, await resp.text(errors="replace")
                        retry_after = retrying.retry_after(resp.headers.get("Retry-After"))
                except aiohttp.ClientConnectorError as exc:  # refused, unknown host, TLS: nothing listens there
                    status, text, retry_after = None, f"{type(exc).__name__}: {exc}", None
                    if self.answered == 0:
                        self._stop(f"the labeler backend {self.provider.name} cannot be reached ({self.redact(exc)}); "
                                   "check --labeler-backend and that the server is running")
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    status, text, retry_after = None, type(exc).__name__, None
                finally:
                    self.in_flight -= 1
            if status == 200:
                self.answered += 1
                try:
                    return json.loads(text)
                except ValueError:
                    return None  # malformed: the caller asks again
            what = f"HTTP {status}: {self._message(text)}" if status is not None else f"no answer ({text})"
            if status in (401, 403):
                self._stop(f"the labeler backend {self.provider.name} refused the key ({what})")
            if status == 404:
                self._stop(f"the labeler backend {self.provider.name} has no model {self.model!r} or no such "
                           f"endpoint ({what})")
            retryable = status is None or status in (408, 409, 425, 429) or status >= 500
            if not retryable:
                self.refused += 1
                if self.answered == 0 and self.refused >= REFUSALS_BEFORE_ANY_ANSWER:
                    self._stop(f"the labeler backend {self.provider.name} refused the first {self.refused} requests "
                               f"and answered none ({what}); check the model id (--labeler {self.model!r}) and "
                               "--labeler-backend")
                raise LLMError(f"the labeler answered {what}")
            if attempt >= self.max_retries:
                raise LLMError(f"the labeler failed after {attempt + 1} tries: {what}")
            backoff = retrying.backoff(self.backoff_base_s, attempt, BACKOFF_CAP_S)
            wait = min(RETRY_AFTER_CAP_S, retry_after) if status == 429 and retry_after is not None else backoff
            attempt += 1
            await asyncio.sleep(wait)

    def _message(self, text: str) -> str:
        try:
            data = json.loads(text)
            err = data.get("error") if isinstance(data, dict) else None
            msg = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else None
            if msg:
                return self.redact(msg)[:200]
        except ValueError:
            pass
        return self.redact(text)[:200] or "(empty body)"

    def _stop(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = FatalLLMError(self.redact(message))
        raise self.fatal

    def _check_fatal(self) -> None:
        if self.fatal is not None:
            raise self.fatal
