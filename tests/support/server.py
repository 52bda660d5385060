"""A real Neuroscope server on ephemeral loopback ports, run on its own event loop thread, and an SSE reader."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import httpx

from neuroscope.labels.table import Labels
from neuroscope.server.access import Access
from neuroscope.server.app import Bound, NeuroscopeServer
from tests.support.reference import load_backend


class Streamed(NamedTuple):
    id: str | None
    text: str
    finish_reason: str | None
    logprobs: list  # the chunks' logprobs.content entries, in order


def stream_chat(srv, body: dict, *, timeout: float = 120) -> Streamed:
    """One streaming chat request to ``srv``: its id, text, finish_reason and per-token logprobs."""
    text, rid, finish, lps = [], None, None, []
    with httpx.stream("POST", f"{srv.chat}/v1/chat/completions", json={**body, "stream": True},
                      timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                rid = chunk["id"]
                if chunk["choices"]:
                    choice = chunk["choices"][0]
                    text.append(choice["delta"].get("content") or "")
                    finish = choice.get("finish_reason") or finish
                    lps += (choice.get("logprobs") or {}).get("content") or []
    return Streamed(rid, "".join(text), finish, lps)


class GatedBackend:
    """A real backend whose ``prefill`` waits until ``gate`` is set: holds the generation thread on one request
    so that others queue behind it, deterministically."""

    def __init__(self, backend, gate: threading.Event):
        self._backend, self.gate = backend, gate
        self.entered = threading.Event()  # a prefill is waiting at the gate

    def prefill(self, *args, **kwargs):
        self.entered.set()
        self.gate.wait(60)
        return self._backend.prefill(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._backend, name)


class RunningServer:
    def __init__(self, backend_name: str, fx, *, top_k: int = 8, queue_size: int = 1024, max_tokens: int = 64,
                 access: Access | None = None, port: int = 0, features_port: int = 0,
                 gate: threading.Event | None = None, feature_filter=None, labels=None, **server_kwargs):
        """``gate``: generation waits for it before each request's prefill; ``feature_filter`` (an
        ``ActiveFilter``) is set on the backend as the runtime does and passed on; ``labels``: a label chain
        (default: the fixture's label file); ``server_kwargs`` go to
        :class:`NeuroscopeServer` (max_queue, idle_timeout, body_timeout, served_model_names, ...)."""
        self.backend, self.info, sae = load_backend(backend_name, fx, top_k=top_k)
        if feature_filter is not None:
            self.backend.set_feature_filter(feature_filter.feature_filter)
        if gate is not None:
            self.backend = GatedBackend(self.backend, gate)
        labels = labels if labels is not None else Labels.load(fx.labels_path, sae.d_sae)
        self.server = NeuroscopeServer(
            self.backend, self.info, labels, layer=fx.sae_layer, backend_name=backend_name, sae_id="tiny",
            host="127.0.0.1", port=port, features_port=features_port, default_max_tokens=max_tokens,
            queue_size=queue_size, top_k=top_k, access=access, feature_filter=feature_filter, **server_kwargs,
        )
        self.model_id = self.info.model_id
        self.bound: Bound | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(60) or self.bound is None:
            raise RuntimeError(f"server did not start: {self._error!r}")

    def _run(self) -> None:
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with self.server as bound:
                self.bound = bound
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by the constructor / stop()
            self._error = exc
            self._ready.set()

    @property
    def chat(self) -> str:
        return f"http://127.0.0.1:{self.bound.chat_port}"

    @property
    def features(self) -> str:
        return f"http://127.0.0.1:{self.bound.features_port}"

    def subscribers(self) -> int:
        return httpx.get(f"{self.features}/health").json()["subscribers"]

    def wait_subscribers(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.subscribers() < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {n} subscribers after {timeout}s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self.backend.close()
        assert not self._thread.is_alive(), "server thread did not stop"


@dataclass
class SSEReader:
    """Reads ``event:``/``data:`` frames from a feature stream on a thread until told to stop or the stream ends."""

    url: str
    until_complete: int | None = None  # stop after this many generation_complete events
    events: list[tuple[str, dict]] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)
    connected: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def start(self) -> "SSEReader":
        """Returns once the server answered, i.e. once this reader is subscribed (the handler subscribes
        before it sends the response headers)."""
        threading.Thread(target=self._run, daemon=True).start()
        if not self.connected.wait(30) and self.error is None:
            raise TimeoutError(f"no answer from {self.url}")
        return self

    def _run(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=httpx.Timeout(60.0)) as resp:
                resp.raise_for_status()
                self.connected.set()
                event, data = "message", []
                completes = 0
                for line in resp.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip(" "))
                    elif line == "" and data:
                        self.events.append((event, json.loads("\n".join(data))))
                        completes += event == "generation_complete"
                        event, data = "message", []
                        if self.until_complete is not None and completes >= self.until_complete:
                            return
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
        finally:
            self.connected.set()
            self.ended.set()

    def wait(self, timeout: float = 60.0) -> list[tuple[str, dict]]:
        assert self.ended.wait(timeout), "SSE stream did not end in time"
        if self.error is not None:
            raise self.error
        return self.events

    def of(self, request_id: str, name: str = "feature_activation") -> list[dict]:
        return [d for e, d in self.events if e == name and d["request_id"] == request_id]
