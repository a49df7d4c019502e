"""A cancelled caller never loses or double-frees a slot, wherever it is cancelled."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.testing import InMemoryPool


def make_pool(max_size: int, *, timeout: float = 30.0) -> InMemoryPool:
    return InMemoryPool(
        ConnectionPoolConfig(
            pool_name="cancel", min_size=0, max_size=max_size, connection_timeout=timeout
        )
    )


async def assert_pool_is_whole(pool: InMemoryPool) -> None:
    """No lease, no waiter, and every one of max_size slots can be taken at once."""
    stats = pool.get_stats_snapshot()
    assert stats["active_connections"] == 0
    assert stats["waiting_connections"] == 0
    assert pool._gate.in_use == 0
    assert pool._gate.waiting == 0
    leases = [pool.get_connection() for _ in range(pool.config.max_size)]
    for lease in leases:
        # Every slot must be free: each lease is granted without queueing.
        waits_before = pool.stats.pool_waits
        await lease.__aenter__()
        assert pool.stats.pool_waits == waits_before
    for lease in leases:
        await lease.__aexit__(None, None, None)
    assert len(pool.open_connections) <= pool.config.max_size


async def test_waiter_cancelled_while_queued_leaves_the_queue() -> None:
    pool = make_pool(1)
    await pool.initialize()
    async with pool.get_connection():
        task = asyncio.create_task(_lease_once(pool))
        await asyncio.sleep(0)
        assert pool._gate.waiting == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool._gate.waiting == 0
    await assert_pool_is_whole(pool)
    await pool.close()


async def test_waiter_cancelled_after_grant_returns_slot() -> None:
    pool = make_pool(1)
    await pool.initialize()
    holder = pool.get_connection()
    await holder.__aenter__()
    victim = asyncio.create_task(_lease_once(pool))
    await asyncio.sleep(0)
    assert pool._gate.waiting == 1
    # Release hands the slot straight to the victim's future; cancel the victim
    # before it ever runs, so it is cancelled holding a granted slot.
    await holder.__aexit__(None, None, None)
    assert pool._gate.in_use == 1 and pool._gate.waiting == 0
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    await assert_pool_is_whole(pool)
    await pool.close()


async def test_granted_slot_of_cancelled_waiter_passes_to_next_in_line() -> None:
    pool = make_pool(1)
    await pool.initialize()
    holder = pool.get_connection()
    await holder.__aenter__()
    victim = asyncio.create_task(_lease_once(pool))
    await asyncio.sleep(0)
    survivor = asyncio.create_task(_lease_once(pool))
    await asyncio.sleep(0)
    await holder.__aexit__(None, None, None)
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    assert await survivor == "done"
    await assert_pool_is_whole(pool)
    await pool.close()


async def test_holder_cancelled_mid_lease_returns_slot() -> None:
    pool = make_pool(2)
    await pool.initialize()
    entered = asyncio.Event()

    async def hold_forever() -> None:
        async with pool.get_connection():
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(hold_forever())
    await entered.wait()
    assert pool.stats.active_connections == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_pool_is_whole(pool)
    await pool.close()


async def test_caller_cancelled_while_connecting_returns_slot() -> None:
    pool = make_pool(1)
    pool.connect_delay = 3600
    await pool.initialize()
    task = asyncio.create_task(_lease_once(pool))
    await asyncio.sleep(0.01)
    assert pool._gate.in_use == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pool.connect_delay = 0
    await assert_pool_is_whole(pool)
    await pool.close()


async def test_timeout_and_cancel_racing_leave_no_trace() -> None:
    pool = make_pool(1, timeout=0.01)
    await pool.initialize()
    async with pool.get_connection():
        tasks = [asyncio.create_task(_lease_once(pool)) for _ in range(20)]
        await asyncio.sleep(0.01)
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, TimeoutError | asyncio.CancelledError) for r in results)
    await assert_pool_is_whole(pool)
    await pool.close()


async def _lease_once(pool: InMemoryPool, hold_ticks: int = 1) -> str:
    async with pool.get_connection():
        for _ in range(hold_ticks):
            await asyncio.sleep(0)
    return "done"


# (start tick, hold ticks, cancel tick or None)
plan_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=4),
        st.integers(min_value=0, max_value=4),
        st.one_of(st.none(), st.integers(min_value=0, max_value=8)),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(max_size=st.integers(min_value=1, max_value=4), plans=plan_strategy)
def test_random_cancellations_never_lose_or_double_free_a_slot(
    max_size: int, plans: list[tuple[int, int, int | None]]
) -> None:
    asyncio.run(_random_cancellation_scenario(max_size, plans))


async def _random_cancellation_scenario(
    max_size: int, plans: list[tuple[int, int, int | None]]
) -> None:
    # A short timeout turns a lost slot into a quick failure, not a hang.
    pool = make_pool(max_size, timeout=2.0)
    await pool.initialize()

    async def worker(start: int, hold: int) -> None:
        for _ in range(start):
            await asyncio.sleep(0)
        await _lease_once(pool, hold)

    async def cancel_later(task: asyncio.Task[None], tick: int) -> None:
        for _ in range(tick):
            await asyncio.sleep(0)
        task.cancel()

    tasks = []
    cancellers = []
    for start, hold, cancel_tick in plans:
        task = asyncio.create_task(worker(start, hold))
        tasks.append(task)
        if cancel_tick is not None:
            cancellers.append(asyncio.create_task(cancel_later(task, cancel_tick)))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*cancellers)
    assert all(o is None or isinstance(o, asyncio.CancelledError) for o in outcomes)
    await assert_pool_is_whole(pool)
    granted = pool.stats.pool_hits
    assert granted >= sum(1 for o in outcomes if o is None)
    await pool.close()
