"""Neuronpedia labels for the features that actually appear in the stream, fetched in the background.

The generation thread only calls :meth:`LazyNeuronpedia.want` (a ``call_soon_threadsafe``, once per feature);
worker tasks on the server's event loop ask the API with bounded concurrency, hand each answer to the label chain
at once (later events carry it) and a writer task appends them to the cache file in batches, off the loop. Nothing
here ever waits on the generation thread, and the generation thread never waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable

import aiohttp

from neuroscope.labels.neuronpedia.cache import Answer, NeuronpediaCache
from neuroscope.labels.neuronpedia.client import ClientSettings, NeuronpediaClient
from neuroscope.labels.neuronpedia.registry import NeuronpediaIds

log = logging.getLogger("neuroscope.neuronpedia")


class LazyNeuronpedia:
    """``async with`` it on the server's loop; ``want(index)`` from any thread."""

    def __init__(self, ids: NeuronpediaIds, settings: ClientSettings, cache: NeuronpediaCache,
                 on_answer: Callable[[Answer], None]):
        self.ids, self.settings, self.cache, self.on_answer = ids, settings, cache, on_answer
        self.client: NeuronpediaClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[int] | None = None
        self._tasks: list[asyncio.Task] = []
        self._pending: list[Answer] = []
        self._wake: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self.written = 0

    # ------------------------------------------------------------------------------------------ any thread
    def want(self, index: int) -> None:
        loop, queue = self._loop, self._queue
        if loop is None or queue is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(queue.put_nowait, int(index))

    @property
    def state(self) -> str:
        return self.client.state if self.client is not None else "idle"

    def status(self) -> dict:
        c = self.client
        return {"state": self.state, "url": self.settings.base_url,
                "asked": c.asked if c else 0, "answered": c.answered if c else 0,
                "gave_up": c.gave_up if c else 0, "written": self.written,
                "last_error": c.last_error if c and c.state == "unreachable" else None}

    # ------------------------------------------------------------------------------------------ the loop
    async def __aenter__(self) -> "LazyNeuronpedia":
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._wake = asyncio.Event()
        self._session = aiohttp.ClientSession()
        self.client = NeuronpediaClient(self.ids, self.settings, self._session)
        n = max(1, self.settings.concurrency)
        self._tasks = [asyncio.create_task(self._worker(), name=f"neuronpedia-{i}") for i in range(n)]
        self._tasks.append(asyncio.create_task(self._writer(), name="neuronpedia-writer"))
        return self

    async def __aexit__(self, *exc) -> None:
        self._loop = None
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._flush()
        if self._session is not None:
            await self._session.close()

    async def _worker(self) -> None:
        assert self._queue is not None and self.client is not None and self._wake is not None
        while True:
            index = await self._queue.get()
            try:
                answer = await self.client.feature(index)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one answer end the worker
                log.exception("asking Neuronpedia for feature %d failed", index)
                continue
            if answer is None:
                continue
            self.on_answer(answer)
            self._pending.append(answer)
            self._wake.set()

    async def _writer(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await asyncio.to_thread(self.cache.append, batch)
            self.written += len(batch)
        except OSError as exc:
            log.warning("cannot write the Neuronpedia cache %s: %s", self.cache.path, exc)
