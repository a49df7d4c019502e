"""The kernel's shared rules: one way to stop a loop, one jitter and tick rule."""

from __future__ import annotations

import asyncio
import contextlib
import math

import pytest

from resync.core.pools.kernel import pacing
from resync.core.pools.kernel.loops import start_task, stop_task


async def test_stop_task_cancels_and_waits_until_the_loop_ended() -> None:
    ended = asyncio.Event()

    async def loop() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.01)  # cleanup that suspends must finish first
            ended.set()

    task = start_task(loop(), name="t-loop")
    await asyncio.sleep(0)
    await stop_task(task)
    assert task.cancelled()
    assert ended.is_set()
    await stop_task(task)  # a finished task is fine
    await stop_task(None)


async def test_stop_task_recancels_a_loop_that_swallows_cancellation() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while swallowed < 3:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1

    task = start_task(stubborn(), name="t-stubborn")
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_task(task, recancel_every=0.01), 5)
    assert swallowed == 3
    assert task.done()


async def test_stop_task_logs_a_crash_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    async def crash() -> None:
        raise RuntimeError("loop crashed")

    task = start_task(crash(), name="t-crash")
    await asyncio.sleep(0.01)
    with caplog.at_level("DEBUG", logger="resync.core.pools.kernel.loops"):
        await stop_task(task)
    assert "t-crash" in caplog.text and "loop crashed" in caplog.text


async def test_the_callers_own_cancellation_propagates() -> None:
    release = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await release.wait()

    task = start_task(slow_to_end(), name="t-slow")
    await asyncio.sleep(0)
    closer = asyncio.create_task(stop_task(task))
    await asyncio.sleep(0.01)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()


def test_expiry_takes_off_at_most_five_percent() -> None:
    assert pacing.expiry(10.0, 0) == math.inf
    assert pacing.expiry(10.0, -1) == math.inf
    values = [pacing.expiry(10.0, 100.0) for _ in range(500)]
    assert all(105.0 <= v <= 110.0 for v in values)
    assert len(set(values)) > 1


def test_maintenance_tick_is_a_quarter_of_the_shortest_period_clamped() -> None:
    assert pacing.maintenance_tick() == pacing.MAX_TICK
    assert pacing.maintenance_tick(0, -1) == pacing.MAX_TICK
    assert pacing.maintenance_tick(8.0, 2.0, 0) == 0.5
    assert pacing.maintenance_tick(0.001) == pacing.MIN_TICK
    assert pacing.maintenance_tick(10_000) == pacing.MAX_TICK


def test_jittered_stays_within_ten_percent() -> None:
    values = [pacing.jittered(10.0) for _ in range(500)]
    assert all(9.0 <= v <= 11.0 for v in values)
    assert len(set(values)) > 1
