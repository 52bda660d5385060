"""What the generation thread is given and gives back: a generation job, a call (other device work), and the
chunks and final ``Done`` a job's output queue yields."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from neuroscope.core.protocol import GenerationParams


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


@dataclass
class Job:
    prompt_ids: list[int]
    params: GenerationParams
    stop: list[str] = field(default_factory=list)
    request_id: str = field(default_factory=new_request_id)
    created: int = field(default_factory=lambda: int(time.time()))
    # filled by the engine
    out: asyncio.Queue | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    completion_tokens: int = 0
    finish_reason: str | None = None

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class Call:
    """Device work other than a generation (a feature page's linear algebra, an inspect prefill): ``fn`` runs
    on the generation thread, queued like a job: between two generations, or between two decode steps of a
    running batch."""

    fn: Callable[[], Any]
    request_id: str = field(default_factory=lambda: f"call-{uuid.uuid4().hex[:24]}")
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: asyncio.Future | None = None

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the top-n alternatives, as text (for the response shapes)."""

    token: str
    logprob: float
    bytes: list[int]
    offset: int  # where the token's text starts in the generated text
    top: tuple[tuple[str, float, list[int]], ...] = ()  # (token, logprob, bytes), most likely first


@dataclass(frozen=True)
class Chunk:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens of this chunk, when the request asked for logprobs


@dataclass(frozen=True)
class Done:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
