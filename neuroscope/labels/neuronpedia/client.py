"""Neuronpedia's per-feature API (``GET {base}/api/feature/{modelId}/{sourceId}/{index}``), asked politely.

A feature's label is the description of its top-scored explanation. The client honours 429 ``Retry-After``,
backs off with jitter on 5xx, timeouts and malformed bodies, and gives a feature up after a few tries. Repeated
connection failures open a breaker: one warning line, then no request for a while (``unreachable`` asks the
caller to stop instead, for the bulk command). The API key (``NEURONPEDIA_API_KEY``) goes in ``x-api-key`` and is
never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace

import aiohttp

from neuroscope.labels import retrying
from neuroscope.labels.neuronpedia.cache import Answer, now_iso
from neuroscope.labels.neuronpedia.registry import NeuronpediaIds

log = logging.getLogger("neuroscope.neuronpedia")

DEFAULT_URL = "https://www.neuronpedia.org"
URL_ENV = "NEURONPEDIA_URL"
KEY_ENV = "NEURONPEDIA_API_KEY"
_CONNECTION_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


@dataclass(frozen=True)
class ClientSettings:
    base_url: str = DEFAULT_URL
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0  # one request, all of it
    tries: int = 4  # per feature, over 429 / 5xx / timeouts / malformed answers
    backoff_s: float = 0.5  # first back-off; doubles per try, times a jitter of 0.5..1.5
    max_wait_s: float = 60.0  # the longest Retry-After honoured as given
    breaker_failures: int = 3  # consecutive connection failures that open the breaker
    breaker_pause_s: float = 300.0  # how long nothing is asked after that
    concurrency: int = 4  # requests in flight at once

    @classmethod
    def from_env(cls, **overrides) -> "ClientSettings":
        base = (os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        return replace(cls(base_url=base, api_key=os.environ.get(KEY_ENV) or None), **overrides)


class Unreachable(RuntimeError):
    """Neuronpedia could not be reached (raised only by clients made with ``stop_when_unreachable``)."""


def probe(base_url: str, timeout_s: float = 3.0) -> str | None:
    """Whether Neuronpedia's host accepts a TCP connection within ``timeout_s``: None when it does, else why not
    (run on a thread while the model loads, so an offline start says so at once instead of after failures)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"cannot reach {base_url}: {exc.strerror or exc}"


def best_explanation(explanations: list) -> tuple[str, float | None] | None:
    """The description of the top-scored explanation (an explanation's score is the best ``value`` among its
    ``scores``, or its own ``score``); unscored ones rank below scored ones, the first of equals wins."""
    best, best_key = None, None
    for e in explanations if isinstance(explanations, list) else ():
        if not isinstance(e, dict):
            continue
        desc = e.get("description")
        if not isinstance(desc, str) or not desc.strip():
            continue
        values = [s.get("value") for s in e.get("scores") or () if isinstance(s, dict)]
        values.append(e.get("score"))
        nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v)]
        score = max(nums) if nums else None
        key = (score is not None, score if score is not None else 0.0)
        if best_key is None or key > best_key:
            best, best_key = (desc.strip(), score), key
    return best


class NeuronpediaClient:
    """Asks for single features over one ``aiohttp.ClientSession`` (the caller's, or its own)."""

    def __init__(self, ids: NeuronpediaIds, settings: ClientSettings, session: aiohttp.ClientSession, *,
                 stop_when_unreachable: bool = False):
        self.ids, self.settings, self.session = ids, settings, session
        self.stop_when_unreachable = stop_when_unreachable
        self._slots = asyncio.Semaphore(max(1, settings.concurrency))
        self._failures = 0  # consecutive connection failures
        self._paused_until = 0.0
        self._warned: set[str] = set()
        self.state = "idle"  # idle, ok, unreachable
        self.last_error: str | None = None
        self.asked = self.answered = self.gave_up = 0

    def url(self, index: int) -> str:
        return f"{self.settings.base_url}/api/feature/{self.ids.model_id}/{self.ids.source_id}/{index}"

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)
        else:
            log.debug("%s", message)

    def _backoff(self, attempt: int) -> float:
        return retrying.backoff(self.settings.backoff_s, attempt)

    async def _wait_breaker(self) -> None:
        while (left := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(left)

    def _connection_failed(self, exc: BaseException) -> bool:
        """Count one; True when that opened the breaker."""
        self._failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self._failures < self.settings.breaker_failures:
            return False
        self._failures = 0
        self._paused_until = time.monotonic() + self.settings.breaker_pause_s
        self.state = "unreachable"
        self._warn_once("unreachable", f"Neuronpedia is unreachable at {self.settings.base_url} ({self.last_error}): "
                                       f"its labels are skipped; asking again in {self.settings.breaker_pause_s:g} s")
        return True

    async def feature(self, index: int) -> Answer | None:
        """The answer for one feature (``label`` None: Neuronpedia has none), or None when given up."""
        self.asked += 1
        headers = {"accept": "application/json"}
        if self.settings.api_key:
            headers["x-api-key"] = self.settings.api_key
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        attempt = 0
        while attempt < self.settings.tries:
            await self._wait_breaker()
            wait: float | None = None
            try:
                async with self._slots:
                    async with self.session.get(self.url(index), headers=headers, timeout=timeout) as resp:
                        status = resp.status
                        retry_after = resp.headers.get("Retry-After")
                        body = await resp.read() if status == 200 else b""
            except _CONNECTION_ERRORS as exc:
                if self._connection_failed(exc) and self.stop_when_unreachable:
                    raise Unreachable(f"Neuronpedia is unreachable at {self.settings.base_url} ({self.last_error})")
                await asyncio.sleep(self._backoff(0))
                continue  # not a try of this feature: the breaker decides when to stop
            except (asyncio.TimeoutError, aiohttp.ClientError) as exc:  # read timeouts, dropped connections
                self.last_error = f"{type(exc).__name__}: {exc}"
                status, retry_after, body = None, None, b""
            self._failures = 0
            attempt += 1
            if status == 200:
                answer = self._parse(index, body)
                if answer is not None:
                    self.state = "ok"
                    self.answered += 1
                    return answer
                log.debug("Neuronpedia answered feature %d with a malformed body", index)
            elif status == 404:
                self.state = "ok"
                self.answered += 1
                return Answer(index, None, None, now_iso())
            elif status == 429:
                wait = retrying.retry_after(retry_after)
                wait = self._backoff(attempt) if wait is None else min(wait, self.settings.max_wait_s)
            elif status in (401, 403):
                self._warn_once("refused", f"Neuronpedia refused the request ({status}): check {KEY_ENV}")
                break
            elif status is not None and status < 500:
                log.debug("Neuronpedia answered feature %d with %d", index, status)
                break
            if attempt < self.settings.tries:
                await asyncio.sleep(self._backoff(attempt - 1) if wait is None else wait)
        self.gave_up += 1
        return None

    def _parse(self, index: int, body: bytes) -> Answer | None:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        if data is None:  # no such feature
            return Answer(index, None, None, now_iso())
        if not isinstance(data, dict):
            return None
        best = best_explanation(data.get("explanations") or [])
        if best is None:
            return Answer(index, None, None, now_iso())
        return Answer(index, best[0], best[1], now_iso())
