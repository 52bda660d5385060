"""The one decode loop every backend runs under: the per-token state machine, written once.

A backend provides the framework pieces (:class:`neuroscope.core.protocol.Backend`): ``prefill`` queues the first
token, ``decode_step`` queues the next one, ``to_host`` waits for a record. This loop strings them together,
pipelined one token ahead as mlx-lm's ``generate_step`` does: the step for token t+1 is queued *before* the
host waits on token t's record, so the host work for t overlaps the device work for t+1. It stops on an EOS
id (that step is yielded, ``finish_reason="stop"``) or after ``max_tokens`` (``"length"``); a consumer that
stops iterating (cancellation) closes the generator.
"""

from __future__ import annotations

from typing import Iterator

from neuroscope.core.protocol import Backend, GenerationParams, Step
from neuroscope.core.records import prompt_step, token_step


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
