"""One job's host side on the generation thread (:class:`RequestStream`): each ``Step`` becomes a text delta and
a feature event — detokenizer, stop strings, logprobs, timing — the same whether the job decodes alone or in a
batch. It calls back into its :class:`~neuroscope.core.engine.Engine` to publish on the event loop."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from neuroscope.core.jobs import Job
from neuroscope.core.protocol import Step
from neuroscope.core.text import Detokenizer, StopMatcher

if TYPE_CHECKING:
    from neuroscope.core.engine import Engine


class RequestStream:
    """One job's host side on the generation thread: each Step becomes a text delta and a feature event (detokenizer,
    stop strings, logprobs, timing), the same whether the job decodes alone or in a batch."""

    def __init__(self, engine: Engine, job: Job):
        self.engine, self.job = engine, job
        params = job.params
        if engine.hub.prompt_subscribers > 0 and not params.prompt_features:
            params = replace(params, prompt_features=True)
        if not params.eos_token_ids:
            params = replace(params, eos_token_ids=engine.eos_ids)
        self.params, self.prompt_ids = params, job.prompt_ids
        tok = engine.info.tokenizer
        self.detok = Detokenizer(tok)
        self.prompt_detok = Detokenizer(tok, skip_special_tokens=False)
        self.stops = StopMatcher(job.stop)
        self.last: float | None = None  # the first token's time is the prefill's: not a time per token
        self.offset = 0  # characters generated so far (the text offset of the next token)
        with engine._lock:
            engine.running[id(job)] = job
        engine._stepped = True

    def step(self, step: Step) -> str | None:
        """Publish one step; returns the finish reason when the job is over."""
        engine, job = self.engine, self.job
        if job.cancelled.is_set():
            return "cancelled"
        if step.prompt:
            engine._post(engine._publish, "feature_activation",
                         engine._event(job, step, self.prompt_detok.add(step.token_id)), True)
            return None
        if step.finish_reason == "stop":  # EOS ends the turn: no text, but its features are the model's state as
            engine._post(engine._publish, "feature_activation", engine._event(job, step, ""), False)  # it stopped
            return "stop"
        delta = self.detok.add(step.token_id)
        if step.finish_reason == "length":
            delta += self.detok.flush()
        event = engine._event(job, step, delta)
        job.completion_tokens += 1
        on_token = engine.on_token
        if on_token is not None:
            now = time.perf_counter()
            on_token(None if self.last is None else now - self.last)
            self.last = now
        lps = () if step.logprob is None else (engine._logprob(step, self.offset),)
        self.offset += len(delta)
        visible = self.stops.feed(delta)
        engine._post(engine._deliver, job, visible, event, lps)
        if self.stops.stopped:
            return "stop"
        return "length" if step.finish_reason == "length" else None

    def cancelled(self) -> bool:
        return self.job.cancelled.is_set()

    def end(self, finish: str, error: str | None = None) -> None:
        self.engine._release(self.job)
        if finish not in ("cancelled", "error"):
            # text held back as a possible stop-string prefix is released now. Bytes of an unfinished UTF-8
            # character before EOS are dropped: they decode to nothing and belong to no token event.
            rest = self.stops.finish()
            if rest:
                self.engine._post(self.engine._deliver, self.job, rest, None)
        self.engine._finish(self.job, finish, error)
