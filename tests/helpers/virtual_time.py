"""Run a coroutine on looptime's virtual clock (exact, instant time in tests).

``loop.time()`` starts at 0 and jumps straight to the next timer whenever
every task is waiting, so ``asyncio.sleep(1.0)`` takes no real time and the
admission gate's clock reads exact values. looptime's pytest plugin is off in
this suite (see pyproject.toml); tests call :func:`run_virtual` from a plain
``def`` test instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import looptime

T = TypeVar("T")


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """``main()`` on a fresh virtual-time loop, closed afterwards."""

    async def wrapped() -> T:
        return await main()

    with asyncio.Runner(loop_factory=lambda: looptime.new_event_loop(start=0.0)) as runner:
        return runner.run(wrapped())
