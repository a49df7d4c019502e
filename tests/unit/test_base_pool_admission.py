"""The base pool's admission: cap, FIFO order, timeouts, overload, lifecycle errors."""

from __future__ import annotations

import asyncio
import time

import pytest

from resync.core.exceptions import (
    PoolClosedError,
    PoolError,
    PoolNotInitializedError,
    PoolOverloadedError,
    PoolSetupError,
    PoolTimeoutError,
)
from resync.core.pools.base_pool import ConnectionPoolConfig, PoolState
from resync.testing import InMemoryPool


def make_pool(**overrides: object) -> InMemoryPool:
    values: dict[str, object] = {
        "pool_name": "mem",
        "min_size": 1,
        "max_size": 4,
        "connection_timeout": 2.0,
    }
    values.update(overrides)
    return InMemoryPool(ConnectionPoolConfig(**values))  # type: ignore[arg-type]


async def test_max_size_is_never_exceeded_by_1000_tasks() -> None:
    pool = make_pool(max_size=7, connection_timeout=30)
    await pool.initialize()
    active = 0
    peak = 0

    async def worker() -> None:
        nonlocal active, peak
        async with pool.get_connection():
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0)
            active -= 1

    await asyncio.gather(*(worker() for _ in range(1000)))
    assert peak == 7
    stats = pool.get_stats_snapshot()
    assert stats["peak_active"] == 7
    assert stats["pool_hits"] == 1000
    assert stats["active_connections"] == 0
    assert stats["waiting_connections"] == 0
    assert len(pool.open_connections) <= 7
    await pool.close()


async def test_waiters_are_granted_in_arrival_order() -> None:
    pool = make_pool(max_size=2, connection_timeout=30)
    await pool.initialize()
    grants: list[int] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with pool.get_connection():
            await release.wait()

    async def waiter(i: int) -> None:
        async with pool.get_connection():
            grants.append(i)
            await asyncio.sleep(0)

    holders = [asyncio.create_task(holder()) for _ in range(2)]
    await asyncio.sleep(0)
    waiters = []
    for i in range(200):
        waiters.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0)  # make arrival order unambiguous
    assert pool.stats.waiting_connections == 200
    release.set()
    await asyncio.gather(*holders, *waiters)
    assert grants == list(range(200))
    await pool.close()


async def test_newcomer_cannot_barge_ahead_of_a_queued_waiter() -> None:
    pool = make_pool(max_size=1, connection_timeout=30)
    await pool.initialize()
    order: list[str] = []
    first = pool.get_connection()
    await first.__aenter__()

    async def queued() -> None:
        async with pool.get_connection():
            order.append("queued")

    task = asyncio.create_task(queued())
    await asyncio.sleep(0)
    # Release and immediately try again from this task: the slot was handed
    # to the queued waiter, so the newcomer must wait behind it.
    await first.__aexit__(None, None, None)
    async with pool.get_connection():
        order.append("newcomer")
    await task
    assert order == ["queued", "newcomer"]
    await pool.close()


async def test_timeout_raises_typed_error_naming_pool_and_figures() -> None:
    pool = make_pool(max_size=1, connection_timeout=0.2)
    await pool.initialize()
    async with pool.get_connection():
        started = time.monotonic()
        with pytest.raises(PoolTimeoutError) as info:
            async with pool.get_connection():
                pass
        elapsed = time.monotonic() - started
    assert isinstance(info.value, TimeoutError)
    assert str(info.value).startswith("Timeout acquiring connection from pool 'mem' after 0.2s")
    assert "1 active of max 1" in str(info.value)
    assert info.value.pool_name == "mem"
    assert 0.15 <= elapsed < 2.0
    stats = pool.get_stats_snapshot()
    assert stats["pool_exhaustions"] == 1
    assert stats["pool_misses"] == 1
    assert stats["waiting_connections"] == 0
    await pool.close()


async def test_max_waiting_sheds_load_at_once() -> None:
    pool = make_pool(max_size=1, max_waiting=2, connection_timeout=30)
    await pool.initialize()
    gate = asyncio.Event()

    async def hold() -> None:
        async with pool.get_connection():
            await gate.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(3)]  # 1 holds, 2 queue
    await asyncio.sleep(0.01)
    assert pool.stats.waiting_connections == 2
    started = time.monotonic()
    with pytest.raises(PoolOverloadedError, match="overloaded"):
        async with pool.get_connection():
            pass
    assert time.monotonic() - started < 0.5
    assert pool.stats.pool_overloads == 1
    gate.set()
    await asyncio.gather(*tasks)
    await pool.close()


async def test_lease_before_initialize_says_not_initialized() -> None:
    pool = make_pool()
    with pytest.raises(PoolNotInitializedError, match="not initialized"):
        async with pool.get_connection():
            pass


async def test_lease_after_close_says_shutdown() -> None:
    pool = make_pool()
    await pool.initialize()
    await pool.close()
    with pytest.raises(PoolClosedError, match="shutdown"):
        async with pool.get_connection():
            pass
    assert pool.state is PoolState.CLOSED
    assert pool._shutdown is True


async def test_close_drains_active_leases_before_closing_the_driver() -> None:
    pool = make_pool(max_size=3)
    await pool.initialize()
    finished: list[int] = []

    async def work(i: int) -> None:
        async with pool.get_connection() as conn:
            await asyncio.sleep(0.1)
            assert not conn.closed  # the driver was not closed under us
            finished.append(i)

    tasks = [asyncio.create_task(work(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    await pool.close(drain_timeout=5)
    assert sorted(finished) == [0, 1, 2]
    assert pool.open_connections == set()
    assert pool.leases_abandoned == 0
    await asyncio.gather(*tasks)


async def test_close_refuses_queued_waiters_and_gives_up_after_drain_timeout() -> None:
    pool = make_pool(max_size=1, connection_timeout=30)
    await pool.initialize()
    hold = asyncio.Event()

    async def holder() -> None:
        async with pool.get_connection():
            await hold.wait()

    async def waiter() -> None:
        async with pool.get_connection():
            pass

    h = asyncio.create_task(holder())
    await asyncio.sleep(0)
    w = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    await pool.close(drain_timeout=0.05)
    with pytest.raises(PoolClosedError):
        await w
    assert pool.leases_abandoned == 1
    hold.set()
    await h
    assert pool.stats.active_connections == 0


async def test_initialize_runs_setup_once_for_50_concurrent_callers() -> None:
    pool = make_pool(min_size=3)
    await asyncio.gather(*(pool.initialize() for _ in range(50)))
    assert pool.stats.connection_creations == 3
    assert pool.is_ready
    await pool.initialize()
    assert pool.stats.connection_creations == 3
    await pool.close()


async def test_close_is_idempotent_and_concurrent() -> None:
    pool = make_pool()
    await pool.initialize()
    await asyncio.gather(*(pool.close() for _ in range(10)))
    await pool.close()
    assert pool.state is PoolState.CLOSED


async def test_failed_setup_raises_setup_error_and_can_be_retried() -> None:
    pool = make_pool(min_size=2)
    pool.fail_setup = OSError("connection refused to 10.0.0.1")
    with pytest.raises(PoolSetupError, match="Failed to setup pool 'mem'"):
        await pool.initialize()
    assert pool.state is PoolState.NEW
    pool.fail_setup = None
    await pool.initialize()
    assert pool.is_ready
    await pool.close()


async def test_initialize_after_close_is_refused() -> None:
    pool = make_pool()
    await pool.initialize()
    await pool.close()
    with pytest.raises(PoolClosedError):
        await pool.initialize()


async def test_errors_are_catchable_by_kind_and_as_pool_errors() -> None:
    pool = make_pool()
    with pytest.raises(PoolError):
        async with pool.get_connection():
            pass


async def test_pool_used_as_async_context_manager_opens_and_closes() -> None:
    async with make_pool() as pool:
        assert pool.is_ready
    assert pool.state is PoolState.CLOSED


async def test_repr_shows_name_state_and_counts() -> None:
    pool = make_pool(max_size=3)
    await pool.initialize()
    async with pool.get_connection():
        text = repr(pool)
    assert text == (
        "<InMemoryPool 'mem' [ready | leases: 1 active, 0 waiting, max 3 | connections: 0 idle]>"
    )
    await pool.close()


async def test_health_check_does_a_round_trip_and_records_the_time() -> None:
    pool = make_pool()
    assert await pool.health_check() is False  # not initialized: no I/O, just False
    await pool.initialize()
    assert await pool.health_check() is True
    assert pool.stats.last_health_check is not None
    await pool.close()
    assert await pool.health_check() is False


async def test_lease_ending_in_error_discards_connection_and_frees_slot() -> None:
    pool = make_pool(max_size=1)
    await pool.initialize()
    with pytest.raises(ValueError, match="boom"):
        async with pool.get_connection() as conn:
            raise ValueError("boom")
    assert conn.closed
    async with pool.get_connection() as conn2:
        assert conn2 is not conn
    assert pool.stats.active_connections == 0
    await pool.close()


async def test_hooks_are_called_around_each_lease() -> None:
    events: list[str] = []

    class Hooked(InMemoryPool):
        async def on_connection_acquired(self, connection: object) -> None:
            events.append("acquired")

        async def on_connection_released(self, connection: object) -> None:
            events.append("released")

    pool = Hooked(ConnectionPoolConfig(pool_name="hooked", min_size=0, max_size=1))
    await pool.initialize()
    async with pool.get_connection():
        events.append("body")
    assert events == ["acquired", "body", "released"]
    await pool.close()


async def test_slow_connect_counts_against_the_same_timeout() -> None:
    pool = make_pool(min_size=0, max_size=1, connection_timeout=0.1)
    pool.connect_delay = 5.0
    await pool.initialize()
    with pytest.raises(PoolTimeoutError):
        async with pool.get_connection():
            pass
    assert pool.stats.active_connections == 0
    assert pool._gate.in_use == 0
    await pool.close()


async def test_resize_grows_to_admit_waiters_and_shrinks_without_breaking_leases() -> None:
    pool = make_pool(min_size=0, max_size=1, connection_timeout=30)
    await pool.initialize()
    first = pool.get_connection()
    await first.__aenter__()
    second = pool.get_connection()
    entering = asyncio.create_task(second.__aenter__())
    await asyncio.sleep(0)
    assert pool._gate.waiting == 1
    await pool.resize(0, 2)  # growing admits the waiter at once
    await entering
    assert pool._gate.waiting == 0 and pool._gate.in_use == 2
    await pool.resize(0, 1)  # two leases stay valid above the new cap
    queued = asyncio.create_task(_hold_briefly(pool))
    await asyncio.sleep(0)
    await first.__aexit__(None, None, None)
    await asyncio.sleep(0)
    # The freed slot was above the new capacity: retired, not handed on.
    assert pool._gate.in_use == 1 and pool._gate.waiting == 1
    await second.__aexit__(None, None, None)
    await queued
    assert pool._gate.in_use == 0
    assert pool.get_stats_snapshot()["max_size"] == 1
    await pool.close()


async def test_resize_refuses_invalid_sizes() -> None:
    pool = make_pool()
    with pytest.raises(ValueError, match=r"max_size \(1\) must be >= min_size \(3\)"):
        await pool.resize(3, 1)


async def _hold_briefly(pool: InMemoryPool) -> None:
    async with pool.get_connection():
        await asyncio.sleep(0.01)
