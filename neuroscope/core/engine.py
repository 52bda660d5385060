"""The generation thread: one thread owns the backend and runs queued jobs — one at a time, or with ``max_batch``
> 1 on a backend that batches, up to that many together (:class:`neuroscope.core.decode.Scheduler`).

The event loop never runs a forward pass. Per token the thread turns the backend's Step into a text delta
(for the chat response) and a feature event (for the hub), and hands both to the loop with one
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any, Callable

from neuroscope.core import decode
from neuroscope.core.feature_hub import FeatureHub
from neuroscope.core.jobs import Call, Chunk, Done, Job, TokenLogprob
from neuroscope.core.protocol import Backend, BatchingBackend, ModelInfo, Step
from neuroscope.core.stream import RequestStream

if TYPE_CHECKING:  # the engine only calls them; the core does not import the data half
    from neuroscope.calibration.filters import ActiveFilter
    from neuroscope.labels.table import Labels

log = logging.getLogger("neuroscope.engine")

# --max-context's default under batching, for models whose window is longer (the cap is said at start-up)
DEFAULT_BATCH_CONTEXT = 8192


class Engine:
    """Owns the backend on its own thread; ``submit`` queues a job and returns its output queue."""

    def __init__(self, backend: Backend, info: ModelInfo, hub: FeatureHub, labels: Labels, *, layer: int,
                 feature_filter: ActiveFilter | None = None, max_batch: int = 1, max_context: int | None = None):
        """``max_batch`` > 1 on a backend that batches (:class:`BatchingBackend`): up to that many jobs decode
        together, their KV cache for ``max_context`` positions each (default: the model's) allocated here."""
        self.backend = backend
        # the filter the backend applies before top-k; when calibrated, events report surprise and filtered_count
        self.feature_filter = feature_filter
        self.info = info
        self.hub = hub
        self.labels = labels
        self.layer = layer
        self.eos_ids = frozenset(info.eos_token_ids)
        self.special_ids = frozenset(getattr(info.tokenizer, "all_special_ids", ()) or ()) | self.eos_ids
        self._jobs: queue.Queue[Job | Call | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.running: dict[int, Job] = {}  # id -> job being generated (at most max_batch; changed under _lock)
        self._lock = threading.Lock()
        self._stepped = False  # a job has run (the last batch size without batching)
        self.max_context = min(info.context_length, max_context or info.context_length)
        self.max_batch, self.kv_bytes = 1, None  # the batch actually served, and its KV cache's size
        self.scheduler: decode.Scheduler | None = None
        # a batch's KV cache is allocated up front: without --max-context a long-context model (Gemma 3's 32k-128k)
        # gets DEFAULT_BATCH_CONTEXT positions per row, not its whole window (8 rows of 128k would be tens of GB)
        self.context_capped = False
        if max_batch > 1 and isinstance(backend, BatchingBackend):
            batch_context = self.max_context if max_context else min(self.max_context, DEFAULT_BATCH_CONTEXT)
            self.kv_bytes = backend.open_batch(max_batch, batch_context)
            if self.kv_bytes is not None:
                self.max_batch = max_batch
                self.scheduler = decode.Scheduler(backend, max_batch)
                self.context_capped = batch_context < self.max_context
                self.max_context = batch_context
        self.completed = 0
        self.unfinished = 0  # submitted and not yet completed (loop thread only)
        # called on the generation thread per generated token with the seconds since the previous one (None for
        # the first)
        self.on_token: Callable[[float | None], None] | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> "Engine":
        self.start(asyncio.get_running_loop())
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="neuroscope-generation", daemon=True)
        self._thread.start()

    def stop_all(self) -> None:
        """Cancel every queued and running job; the thread finishes each with ``cancelled``."""
        with self._jobs.mutex:
            pending = list(self._jobs.queue)
        for job in pending:
            if job is not None:
                job.cancel()
        with self._lock:
            running = list(self.running.values())
        for job in running:
            job.cancel()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel everything queued or running and join the thread."""
        self.stop_all()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def queued(self) -> int:
        return self._jobs.qsize()

    @property
    def last_batch(self) -> int:
        """Rows in the last decode step (1 without batching once a request has run)."""
        if self.scheduler is not None:
            return self.scheduler.last_batch
        return 1 if self._stepped else 0

    def submit(self, job: Job) -> asyncio.Queue:
        """Queue ``job`` (call on the loop thread); its output queue yields Chunk items then one Done."""
        if self._thread is None:
            raise RuntimeError("engine is not running")
        job.out = asyncio.Queue()
        self.unfinished += 1
        self._jobs.put(job)
        return job.out

    def call(self, fn: Callable[[], Any]) -> asyncio.Future:
        """Queue ``fn`` to run on the generation thread (call on the loop thread); the future gets its result,
        its exception, or ``asyncio.CancelledError`` when the engine stops before it ran."""
        if self._thread is None:
            raise RuntimeError("engine is not running")
        job = Call(fn, future=asyncio.get_running_loop().create_future())
        self.unfinished += 1
        self._jobs.put(job)
        return job.future

    # ------------------------------------------------------------------------------------------ the thread
    def _run(self) -> None:
        if self.scheduler is not None:
            self._run_batched()
            return
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._run_item(job)

    def _run_item(self, job: Job | Call) -> None:
        """Run one queued item to its end: a call, or a job decoded alone (under batching only calls come here,
        between two steps)."""
        if isinstance(job, Call):
            self._run_call(job)
            return
        try:
            self._run_job(job)
        except Exception as exc:  # a failed generation must not take the server down
            log.exception("generation %s failed", job.request_id)
            self._release(job)
            self._finish(job, "error", error=f"generation failed: {exc}")

    def _release(self, job: Job) -> None:
        with self._lock:
            self.running.pop(id(job), None)

    def _run_call(self, job: Call) -> None:
        result, error = None, None
        if job.cancelled.is_set():
            error = asyncio.CancelledError()
        else:
            try:
                result = job.fn()
            except Exception as exc:  # the caller answers it; the thread goes on
                error = exc
        self._post(self._settle, job, result, error)

    def _post(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _run_job(self, job: Job) -> None:
        if job.cancelled.is_set():
            self._finish(job, "cancelled")
            return
        stream = RequestStream(self, job)
        finish = "length"
        gen = decode.generate(self.backend, job.prompt_ids, stream.params)
        try:
            for step in gen:
                reason = stream.step(step)
                if reason is not None:
                    finish = reason
                    break
        finally:
            gen.close()
        stream.end(finish)

    def _run_batched(self) -> None:
        """Continuous batching: the scheduler takes jobs from the queue as rows free up. Should the scheduler itself
        fail, its requests end with an error and it starts again (a failure must not take the server down)."""
        while True:
            try:
                self.scheduler.run(self._take)
                return
            except Exception as exc:
                log.exception("the batch scheduler failed")
                self.scheduler.abort(exc)

    def _take(self, block: bool):
        while True:
            try:
                job = self._jobs.get(block)
            except queue.Empty:
                return None
            if job is None:
                return decode.CLOSED
            if not isinstance(job, Job):  # another kind of queued work runs between steps, as it would alone
                self._run_item(job)
                if not block:
                    return None
                continue
            if job.cancelled.is_set():
                self._finish(job, "cancelled")
                if not block:
                    return None
                continue
            return RequestStream(self, job)

    def _token_text(self, token_id: int) -> tuple[str, list[int]]:
        """A token's own text and its UTF-8 bytes (a byte-fallback token ``<0xNN>`` is that one byte)."""
        tok = self.info.tokenizer
        piece = tok.convert_ids_to_tokens(token_id)
        if isinstance(piece, str) and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                b = [int(piece[3:5], 16)]
                return bytes(b).decode("utf-8", errors="replace"), b
            except ValueError:
                pass
        text = tok.decode([token_id])
        return text, list(text.encode("utf-8"))

    def _logprob(self, step: Step, offset: int) -> TokenLogprob:
        text, b = self._token_text(step.token_id)
        top = tuple((*self._token_text(t), lp) for t, lp in step.top_logprobs or ())
        return TokenLogprob(text, step.logprob, b, offset, tuple((t, lp, tb) for t, tb, lp in top))

    def _event(self, job: Job, step: Step, token_text: str) -> dict[str, Any]:
        index = step.position if step.prompt else job.completion_tokens
        steering = job.params.steering
        return {
            "request_id": job.request_id,
            "token_index": index,
            "token": token_text,
            "token_id": step.token_id,
            "position": step.position,
            "prompt": step.prompt,
            "special": step.token_id in self.special_ids,
            "layer": self.layer,
            "l0": step.l0,
            # whether this position's residual (the one these features read) was steered
            "steered": steering is not None and steering.steers(step.position, len(job.prompt_ids)),
            "top_features": self._features(step),
        } | self._special_name(step) | self._filter_fields(step)

    def _special_name(self, step: Step) -> dict[str, Any]:
        """``{"special_token": "<start_of_turn>"}`` for a special token (its text is empty in a reply), else {}."""
        if step.token_id not in self.special_ids:
            return {}
        name = self.info.tokenizer.convert_ids_to_tokens(step.token_id)
        return {"special_token": name} if isinstance(name, str) else {}

    def _features(self, step: Step) -> list[dict[str, Any]]:
        """The step's features; under a calibrated filter each also carries its ``surprise`` (the raw activation
        times ``-log10(rate) / max`` from calibration)."""
        labels = self.labels
        flt = self.feature_filter
        surprise = flt.surprise if flt is not None else None
        out = []
        ids = step.feature_ids.tolist()
        labels.observe(ids)  # a label chain may ask for labels of features it has not seen (never waits)
        for i, v in zip(ids, step.feature_values.tolist()):
            f = {"index": i, "label": labels[i], "activation": round(v, 6)}
            if surprise is not None:
                f["surprise"] = round(v * float(surprise[i]), 6)
            out.append(f)
        return out

    def _filter_fields(self, step: Step) -> dict[str, Any]:
        """Under a calibrated filter: how many fired features the mask hid (counted on the device)."""
        flt = self.feature_filter
        if flt is None or flt.surprise is None:
            return {}
        return {"filtered_count": step.filtered}

    def _finish(self, job: Job, reason: str, error: str | None = None) -> None:
        job.finish_reason = reason
        done = Done(reason, len(job.prompt_ids), job.completion_tokens, error)
        self._post(self._complete, job, done)

    # ------------------------------------------------------------------------------------------ loop side
    def _publish(self, name: str, data: dict[str, Any], prompt: bool) -> None:
        self.hub.publish(name, data, prompt=prompt)

    def _deliver(self, job: Job, text: str, event: dict[str, Any] | None, logprobs: tuple = ()) -> None:
        if event is not None:
            self.hub.publish("feature_activation", event)
        if text or logprobs:
            job.out.put_nowait(Chunk(text, logprobs))

    def _settle(self, job: Call, result: Any, error: BaseException | None) -> None:
        self.unfinished -= 1
        if job.future.done():  # the caller went away
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    def _complete(self, job: Job, done: Done) -> None:
        self.completed += 1
        self.unfinished -= 1
        self.hub.publish(
            "generation_complete",
            {
                "request_id": job.request_id,
                "tokens": done.completion_tokens,
                "prompt_tokens": done.prompt_tokens,
                "finish_reason": done.finish_reason,
                "steering": None if job.params.steering is None else job.params.steering.to_json(),
                **({"error": done.error} if done.error else {}),
            },
        )
        job.out.put_nowait(done)
