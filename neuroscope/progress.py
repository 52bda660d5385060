"""Rich progress for long jobs (downloads in bytes, work in items), or nothing when there is no console."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text


class _Amount(ProgressColumn):
    """``12.3/157.0 MB`` for downloads, ``120/2000`` for items."""

    def render(self, task: Task) -> Text:
        total = task.total
        if task.fields.get("unit") == "B":
            done = decimal(int(task.completed))
            return Text(f"{done}/{decimal(int(total))}" if total else done, style="progress.download")
        return Text(f"{int(task.completed)}/{int(total)}" if total else f"{int(task.completed)}")


class _Rate(ProgressColumn):
    """``1,234 tok/s`` for a task that reports ``tokens`` (work done since the task started), else nothing."""

    def render(self, task: Task) -> Text:
        tokens, elapsed = task.fields.get("tokens"), task.elapsed
        if not tokens or not elapsed:
            return Text("")
        return Text(f"{tokens / elapsed:,.0f} tok/s", style="progress.data.speed")


class JobProgress:
    """One rich ``Progress`` for a job; ``console=None`` shows nothing."""

    def __init__(self, console: Console | None):
        self._progress = (
            Progress(TextColumn("{task.description}"), BarColumn(), _Amount(), _Rate(), TimeRemainingColumn(),
                     console=console, transient=True)
            if console is not None
            else None
        )

    def __enter__(self) -> JobProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def items(self, description: str, total: int | None, completed: int = 0) -> _Counter:
        """A counter of items; ``completed`` were done before (a resumed job: they do not count toward the ETA)."""
        return _Counter(self._progress, description, total, completed)

    def download_bar(self, description: str, *, use_desc: bool = False) -> type | None:
        """A tqdm-compatible class for ``huggingface_hub``'s ``tqdm_class``, reporting to this progress.
        ``use_desc``: each bar adds its own ``desc`` (``snapshot_download`` opens several: bytes, files)."""
        if self._progress is None:
            return None
        return _tqdm_for(self._progress, description, use_desc)


class _Counter:
    def __init__(self, progress: Progress | None, description: str, total: int | None, completed: int = 0):
        self._progress = progress
        self._task = progress.add_task(description, total=total, completed=completed) if progress is not None else None

    def advance(self, n: int = 1, **fields: Any) -> None:
        """``n`` more items done; ``tokens=`` (the total since the task started) also shows a tokens/s rate."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n, **fields)

    def finish(self, total: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total, completed=total)


def _tqdm_for(progress: Progress, description: str, use_desc: bool = False) -> type:
    from tqdm.std import tqdm as base_tqdm  # a dependency of huggingface_hub

    class RichTqdm(base_tqdm):
        """A real tqdm (so any caller's use of its API works) that draws nothing itself and mirrors into rich."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["file"] = io.StringIO()
            kwargs["disable"] = False
            super().__init__(*args, **kwargs)
            self._rich_task = progress.add_task(self._label(), total=self.total, completed=self.n,
                                                unit="B" if self.unit == "B" else "")

        def _label(self) -> str:
            return f"{description}: {self.desc.rstrip(': ')}" if use_desc and self.desc else description

        def _mirror(self) -> None:
            task = getattr(self, "_rich_task", None)
            if task is not None:
                progress.update(task, completed=self.n, total=self.total, description=self._label())

        def update(self, n: float | None = 1) -> bool | None:
            result = super().update(n)
            self._mirror()
            return result

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            super().refresh(*args, **kwargs)
            self._mirror()

    return RichTqdm
