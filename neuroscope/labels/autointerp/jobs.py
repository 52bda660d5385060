"""Running one LLM call per feature: a fixed pool of workers over the features, a rich progress bar (done,
failed, requests in flight, tokens, ETA), and an immediate stop on a fatal error."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from neuroscope.labels.autointerp.llm import FatalLLMError, LLMClient


class Tally:
    def __init__(self) -> None:
        self.done = 0
        self.failed = 0


async def run_all(items: Sequence[int], work: Callable[[int], Awaitable[bool]], client: LLMClient,
                  description: str, console: Console | None) -> Tally:
    """``work(item)`` for every item, ``client.concurrency`` at a time; it returns False for a failed item.
    A :class:`FatalLLMError` cancels the rest and is raised (no new request is sent after it)."""
    tally = Tally()
    progress = _progress(console)
    task = progress.add_task(description, total=len(items), failed=0, in_flight=0, tokens=0) if progress else None
    pending = iter(items)

    def refresh() -> None:
        if progress is not None and task is not None:
            progress.update(task, completed=tally.done + tally.failed, failed=tally.failed,
                            in_flight=client.in_flight, tokens=client.input_tokens + client.output_tokens)

    async def worker() -> None:
        for item in pending:
            ok = await work(item)
            if ok:
                tally.done += 1
            else:
                tally.failed += 1
            refresh()

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0.25)
            refresh()

    workers = [asyncio.create_task(worker()) for _ in range(min(client.concurrency, len(items)))]
    tick = asyncio.create_task(ticker())
    if progress is not None:
        progress.start()
    try:
        await asyncio.gather(*workers)
    except FatalLLMError:
        for t in workers:
            t.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    finally:
        tick.cancel()
        refresh()
        if progress is not None:
            progress.stop()
    return tally


def _progress(console: Console | None) -> Progress | None:
    if console is None:
        return None
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"), TextColumn("in flight {task.fields[in_flight]}"),
        TextColumn("{task.fields[tokens]:,} tokens"), TimeRemainingColumn(),
        console=console, transient=True,
    )
