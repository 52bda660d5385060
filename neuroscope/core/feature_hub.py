"""Broadcast of feature events to SSE subscribers. Never blocks the producer.

Every subscriber has a bounded queue. When it is full the oldest event is dropped and counted, so a stalled
or vanished consumer cannot slow generation down. All methods run on the event loop thread.

The events of every queued or running request and of the last few finished ones are kept, so a consumer that subscribes with ``request_id`` after
reading it from a chat response (by then generation has begun) still gets that request's events from the
start, and its stream ends after that request's ``generation_complete``.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from dataclasses import dataclass, field
from typing import Any

DEFAULT_QUEUE_SIZE = 1024
HISTORY_REQUESTS = 32  # finished requests whose events are kept for late subscribers (unfinished ones always are)
HISTORY_EVENTS = 4096  # events kept per request (the oldest go first)


@dataclass(eq=False)
class Subscriber:
    request_id: str | None = None  # only events of this request
    include_prompt: bool = False  # also prompt-token events
    maxsize: int = DEFAULT_QUEUE_SIZE
    id: int = 0
    dropped: int = 0
    delivered: int = 0
    _queue: collections.deque = field(default_factory=collections.deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def wants(self, event: dict[str, Any]) -> bool:
        if self.request_id is not None and event["data"].get("request_id") != self.request_id:
            return False
        if event.get("prompt") and not self.include_prompt:
            return False
        return True

    def offer(self, event: dict[str, Any]) -> bool:
        """Queue ``event``; return True when the oldest queued event had to be dropped for it."""
        dropped = len(self._queue) >= self.maxsize
        if dropped:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        self._ready.set()
        return dropped

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self) -> dict[str, Any] | None:
        """The next event, or None once closed and drained."""
        while not self._queue:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        self.delivered += 1
        return self._queue.popleft()

    def pending(self) -> int:
        return len(self._queue)


class FeatureHub:
    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE):
        self.queue_size = queue_size
        self._subs: set[Subscriber] = set()
        self._ids = itertools.count(1)
        self.published = 0
        self._dropped = 0
        # read from the generation thread (an int read is atomic) to decide whether to encode the prefill
        self.prompt_subscribers = 0
        self._history: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()
        self._open_ids: set[str] = set()  # queued or running: never forgotten until they complete

    def open_request(self, request_id: str) -> None:
        """Announce a request as soon as it is queued, so ``?request_id=`` subscribers can wait for it."""
        if request_id not in self._history:
            self._open(request_id)
        self._open_ids.add(request_id)

    def knows(self, request_id: str) -> bool:
        """Whether ``request_id`` is queued, running or among the last few requests."""
        return request_id in self._history

    def _open(self, request_id: str) -> collections.deque:
        hist = self._history[request_id] = collections.deque(maxlen=HISTORY_EVENTS)
        self._evict()
        return hist

    def _evict(self) -> None:
        """Forget the oldest finished requests beyond ``HISTORY_REQUESTS`` (queued and running ones stay)."""
        excess = len(self._history) - len(self._open_ids) - HISTORY_REQUESTS
        if excess <= 0:
            return
        for rid in [r for r in self._history if r not in self._open_ids][:excess]:
            del self._history[rid]

    def subscribe(self, *, request_id: str | None = None, include_prompt: bool = False) -> Subscriber:
        size = self.queue_size if request_id is None else max(self.queue_size, HISTORY_EVENTS)
        sub = Subscriber(request_id, include_prompt, size, next(self._ids))
        if request_id is not None:
            for event in self._history.get(request_id, ()):
                if sub.wants(event):
                    sub.offer(event)
        self._subs.add(sub)
        self.prompt_subscribers += include_prompt
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self._subs:
            self._subs.discard(sub)
            self.prompt_subscribers -= sub.include_prompt
        sub.close()

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def dropped(self) -> int:
        """Events dropped for slow subscribers since start (including subscribers that have left)."""
        return self._dropped

    def stats(self) -> list[dict[str, Any]]:
        return [
            {"id": s.id, "request_id": s.request_id, "include_prompt": s.include_prompt, "pending": s.pending(),
             "delivered": s.delivered, "dropped": s.dropped}
            for s in sorted(self._subs, key=lambda s: s.id)
        ]

    def publish(self, name: str, data: dict[str, Any], *, prompt: bool = False) -> None:
        """Hand ``event: name`` to every interested subscriber (drop-oldest when a queue is full)."""
        event = {"event": name, "data": data, "prompt": prompt}
        self.published += 1
        rid = data.get("request_id")
        if rid is not None:
            hist = self._history.get(rid)
            if hist is None:
                hist = self._open(rid)
            hist.append(event)
            if name == "generation_complete" and rid in self._open_ids:
                self._open_ids.discard(rid)
                self._evict()
        for sub in self._subs:
            if sub.wants(event) and sub.offer(event):
                self._dropped += 1

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()
        self._subs.clear()
        self.prompt_subscribers = 0
