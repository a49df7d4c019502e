"""The admission queue's one timer: every waiter times out exactly when it should.

Waiters with the same timeout expire in queue order and share one timer; a
waiter with a shorter timeout (a caller's deadline) gets its own. Checked on a
virtual clock, so the times are exact.
"""

from __future__ import annotations

import asyncio

from resync.core.pools.kernel.admission import GRANTED, AdmissionGate
from tests.helpers.virtual_time import run_virtual


def test_waiters_time_out_in_order_and_a_shorter_timeout_behind_them_is_not_late() -> None:
    async def main() -> list[tuple[str, float, str]]:
        gate = AdmissionGate(capacity=1)
        assert gate.try_acquire()
        loop = asyncio.get_running_loop()
        ended: list[tuple[str, float, str]] = []

        async def waiter(name: str, timeout: float, delay: float) -> None:
            await asyncio.sleep(delay)
            outcome = await gate.wait(timeout)
            ended.append((name, round(loop.time(), 6), outcome.value))
            if outcome is GRANTED:
                gate.release()

        await asyncio.gather(
            waiter("a", 1.0, 0.0),
            waiter("b", 1.0, 0.1),
            waiter("short", 0.2, 0.2),  # due at 0.4, behind a and b
            waiter("c", 1.0, 0.3),
        )
        return ended

    assert run_virtual(main) == [
        ("short", 0.4, "timed_out"),
        ("a", 1.0, "timed_out"),
        ("b", 1.1, "timed_out"),
        ("c", 1.3, "timed_out"),
    ]


def test_a_granted_waiter_costs_nothing_later_and_later_ones_still_time_out() -> None:
    async def main() -> tuple[list[str], int]:
        gate = AdmissionGate(capacity=1)
        assert gate.try_acquire()
        loop = asyncio.get_running_loop()
        outcomes: list[str] = []

        async def waiter(timeout: float) -> None:
            outcome = await gate.wait(timeout)
            outcomes.append(f"{outcome.value}@{loop.time():.1f}")
            if outcome is GRANTED:
                await asyncio.sleep(0.5)
                gate.release()

        first = asyncio.ensure_future(waiter(2.0))
        await asyncio.sleep(0)
        gate.release()  # hands the slot to the first waiter at 0.0
        await asyncio.sleep(0.1)
        await asyncio.gather(first, waiter(0.3))  # the slot is busy until 0.5
        await asyncio.sleep(3.0)  # the queue's timer, set for 2.0, finds nobody due
        return outcomes, gate.waiting

    assert run_virtual(main) == (["granted@0.0", "timed_out@0.4"], 0)


def test_close_stops_the_timer_and_wakes_every_waiter() -> None:
    async def main() -> list[str]:
        gate = AdmissionGate(capacity=1)
        assert gate.try_acquire()
        waits = [asyncio.ensure_future(gate.wait(5.0)) for _ in range(3)]
        await asyncio.sleep(1.0)
        assert gate.close() == 3
        return [outcome.value for outcome in await asyncio.gather(*waits)]

    assert run_virtual(main) == ["closed", "closed", "closed"]
