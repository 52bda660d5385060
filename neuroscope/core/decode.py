"""The one decode loop every backend runs under: the per-token state machine, written once.

A backend provides the framework pieces (:class:`neuroscope.core.protocol.Backend`): ``prefill`` queues the first
token, ``decode_step`` queues the next one, ``to_host`` waits for a record. This loop strings them together,
pipelined one token ahead as mlx-lm's ``generate_step`` does: the step for token t+1 is queued *before* the
host waits on token t's record, so the host work for t overlaps the device work for t+1. It stops on an EOS
id (that step is yielded, ``finish_reason="stop"``) or after ``max_tokens`` (``"length"``); a consumer that
stops iterating (cancellation) closes the generator.

:class:`Scheduler` is the same state machine for many requests at once (continuous batching): requests join the
backend's batch at step boundaries (their prompts prefilled in chunks between steps) and leave it at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterator, Protocol

import numpy as np

from neuroscope.core.protocol import Backend, BatchingBackend, GenerationParams, Prefilled, Step
from neuroscope.core.records import prompt_step, token_step

log = logging.getLogger("neuroscope.decode")


def generate(backend: Backend, prompt_ids: list[int], params: GenerationParams) -> Iterator[Step]:
    """Prompt steps (when ``params.prompt_features``), then one Step per generated token."""
    if not prompt_ids:
        raise ValueError("prompt_ids is empty")
    if params.max_tokens < 1:
        return
    pre = backend.prefill(list(prompt_ids), params)
    if pre.prompt_records is not None:
        rows = backend.to_host(pre.prompt_records)
        if len(rows) != len(prompt_ids):
            raise RuntimeError(f"backend returned {len(rows)} prompt records for {len(prompt_ids)} prompt tokens")
        for j, tid in enumerate(prompt_ids):
            yield prompt_step(tid, rows[j], position=j)
    record = pre.record
    n = len(prompt_ids)
    eos = params.eos_token_ids
    for i in range(params.max_tokens):
        last = i + 1 == params.max_tokens
        # queue token i+1 before waiting on token i (it is discarded if token i turns out to be EOS)
        following = None if last else backend.decode_step(pre.state)
        host = backend.to_host(record)
        finish = "stop" if int(host[0]) in eos else ("length" if last else None)
        yield token_step(host, position=n + i - 1, finish=finish, logprobs=params.logprobs)
        if finish is not None:
            return
        record = following

# ---------------------------------------------------------------------------------------------- batching
CLOSED = object()  # what ``take`` returns when the engine is shutting down


class Sink(Protocol):
    """One request's consumer on the generation thread (the engine's per-job stream)."""

    prompt_ids: list[int]
    params: GenerationParams

    def step(self, step: Step) -> str | None:
        """Handle one Step; returns the finish reason when the request is over (stop, length, cancelled)."""
        ...

    def end(self, finish: str, error: str | None = None) -> None: ...

    def cancelled(self) -> bool:
        """Whether the request was cancelled (checked between the chunks of its prefill)."""
        ...


@dataclass(eq=False)
class _Row:
    sink: Sink
    params: GenerationParams
    n: int  # prompt tokens
    queued: int = 0  # token records queued so far (the prefill's is the first)
    emitted: int = 0  # token records handled so far
    joined: bool = False  # holds a row of the backend's batch
    done: bool = False


class Scheduler:
    """Continuous batching over a :class:`BatchingBackend`: the same per-request state machine as :func:`generate`,
    for up to ``max_batch`` requests at once.

    Each turn: take a queued request when a row is free (blocking only when nothing runs); prefill one chunk of the
    request being admitted (all of it when nothing else runs), and when its prefill is done handle its prompt steps
    and first token and let it join; queue one step of every joined row; then handle the previous step's records
    (pipelined one step ahead, as :func:`generate`). A row leaves the backend's batch as soon as it finishes, is
    cancelled or has all its ``max_tokens`` queued; entries of a step queued before it finished are ignored."""

    def __init__(self, backend: BatchingBackend, max_batch: int):
        self.backend, self.max_batch = backend, max_batch
        self.rows: list[_Row] = []  # requests admitted and not yet ended
        self.last_batch = 0  # rows in the last step

    @property
    def running(self) -> int:
        return len(self.rows)

    def run(self, take: Callable[[bool], Sink | None | object]) -> None:
        """Serve until ``take`` returns :data:`CLOSED` and every admitted request has ended. ``take(block)``
        returns the next request, or None when none is queued (``block`` False)."""
        filling: tuple[_Row, Generator] | None = None
        pending: Any = None
        closing = False
        while True:
            joined = sum(r.joined for r in self.rows)
            if filling is None and not closing and joined < self.max_batch:
                item = take(not self.rows and pending is None)
                if item is CLOSED:
                    closing = True
                elif item is not None:
                    filling = self._admit(item)
            if filling is not None:
                filling = self._fill(*filling, all_chunks=joined == 0)
            step = self._step()
            if pending is not None:
                self._handle(pending)
            pending = step
            self.rows = [r for r in self.rows if not r.done]
            if closing and not self.rows and filling is None and pending is None:
                return

    def _admit(self, sink: Sink) -> tuple[_Row, Generator] | None:
        row = _Row(sink, sink.params, len(sink.prompt_ids))
        if row.params.max_tokens < 1:
            sink.end("length")
            return None
        try:
            if not sink.prompt_ids:
                raise ValueError("prompt_ids is empty")
            gen = self.backend.prefill_steps(list(sink.prompt_ids), row.params, joining=True)
        except Exception as exc:
            self._fail([row], exc)
            return None
        self.rows.append(row)
        return row, gen

    def _fill(self, row: _Row, gen: Generator, *, all_chunks: bool) -> tuple[_Row, Generator] | None:
        """One chunk of ``row``'s prefill (every chunk with ``all_chunks``); when it is done the row's prompt
        steps and first token are handled and it joins the batch."""
        backend = self.backend
        if row.done:  # ended meanwhile (a failed step)
            gen.close()
            return None
        try:
            while True:
                try:
                    next(gen)
                except StopIteration as done:
                    pre: Prefilled = done.value
                    break
                if row.sink.cancelled():  # a client that left while its long prompt was being read
                    gen.close()
                    self._end(row, "cancelled")
                    return None
                if not all_chunks:
                    return row, gen
            if pre.prompt_records is not None:
                recs = backend.to_host(pre.prompt_records)
                if len(recs) != row.n:
                    raise RuntimeError(f"backend returned {len(recs)} prompt records for {row.n} prompt tokens")
                for j, tid in enumerate(row.sink.prompt_ids):
                    finish = row.sink.step(prompt_step(tid, recs[j], position=j))
                    if finish is not None:
                        self._end(row, finish)
                        return None
            row.queued = 1
            self._token(row, backend.to_host(pre.record))
            if not row.done and row.queued < row.params.max_tokens:
                backend.join(row, pre)
                row.joined = True
        except Exception as exc:
            self._fail([row], exc)
        return None

    def _step(self) -> Any:
        rows = [r for r in self.rows if r.joined]
        if not rows:
            return None
        try:
            step = self.backend.batch_step()
        except Exception as exc:
            self._fail(rows, exc)
            return None
        self.last_batch = len(rows)
        for r in rows:
            r.queued += 1
            if r.queued >= r.params.max_tokens:  # every token it may write is queued: its row is free
                self._leave(r)
        return step, rows

    def _handle(self, pending: tuple[Any, list[_Row]]) -> None:
        step, rows = pending
        try:
            records = self.backend.batch_to_host(step)
            missing = [r for r in rows if not any(row is r for row, _ in records)]
            if missing:  # a row left without its token would wait forever
                raise RuntimeError(f"the backend returned {len(records)} records for a step of {len(rows)} rows")
        except Exception as exc:
            self._fail([r for r in self.rows if r.queued > r.emitted], exc)
            return
        for row, rec in records:
            if not row.done:
                self._token(row, rec)

    def _token(self, row: _Row, rec: np.ndarray) -> None:
        """Row's next token record -> its Step (as :func:`generate` makes it) -> the sink."""
        params, i = row.params, row.emitted
        row.emitted += 1
        last = i + 1 == params.max_tokens
        finish = "stop" if int(rec[0]) in params.eos_token_ids else ("length" if last else None)
        result = row.sink.step(token_step(rec, position=row.n + i - 1, finish=finish, logprobs=params.logprobs))
        if result is not None:
            self._end(row, result)
        elif finish is not None:
            self._end(row, finish)

    def _leave(self, row: _Row) -> None:
        if row.joined:
            row.joined = False
            self.backend.leave(row)

    def _end(self, row: _Row, finish: str, error: str | None = None) -> None:
        if row.done:
            return
        row.done = True
        try:
            self._leave(row)
        finally:
            row.sink.end(finish, error)

    def abort(self, exc: Exception) -> None:
        """End every admitted request with an error and drop the batch (after :meth:`run` itself failed)."""
        rows, self.rows = self.rows, []
        for r in rows:
            r.joined = False
        self.backend.reset_batch()
        for r in rows:
            self._end(r, "error", f"generation failed: {exc}")

    def _fail(self, rows: list[_Row], exc: Exception) -> None:
        log.error("generation failed: %s", exc, exc_info=exc)
        if any(r.joined for r in rows):  # a failed step leaves the batch in an unknown state: every row in it ends
            rows = [r for r in self.rows if r.joined or r.queued > r.emitted or any(r is x for x in rows)]
            for r in rows:
                r.joined = False
            self.backend.reset_batch()
        for r in rows:
            self._end(r, "error", f"generation failed: {exc}")
