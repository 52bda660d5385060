"""``aio.run``: a command's coroutine runs from plain code and from a thread whose event loop is already running
(where ``asyncio.run`` refuses), with results and errors handed back as they are."""

from __future__ import annotations

import asyncio
import threading

import pytest

from neuroscope.labels import aio


async def _where() -> tuple[str, int]:
    await asyncio.sleep(0)
    return threading.current_thread().name, 42


def test_without_a_running_loop_it_is_asyncio_run():
    name, value = aio.run(_where())
    assert value == 42 and name == threading.current_thread().name


def test_inside_a_running_loop_it_runs_on_a_thread_of_its_own():
    async def caller():
        with pytest.raises(RuntimeError, match="running event loop"):
            coro = _where()
            try:
                asyncio.run(coro)  # what the commands did before
            finally:
                coro.close()
        return aio.run(_where())

    name, value = asyncio.run(caller())
    assert value == 42 and name == "neuroscope-run"


def test_errors_come_back_as_they_are():
    class Boom(Exception):
        pass

    async def fails():
        raise Boom("x")

    async def caller():
        return aio.run(fails())

    with pytest.raises(Boom):
        aio.run(fails())
    with pytest.raises(Boom):
        asyncio.run(caller())
