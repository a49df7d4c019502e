"""Queue management on a real PostgreSQL pool at three times what it can serve.

Service time is the server's own (``pg_sleep``); callers arrive at a fixed rate
three times the pool's capacity. With queue management on, the callers the pool
cannot serve in time fail with ``DatabasePoolOverloadedError`` (not a timeout),
and the ones it admits are served strictly in arrival order.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from sqlalchemy import text

from resync.core.exceptions import DatabasePoolOverloadedError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool

pytestmark = pytest.mark.postgres

SIZE = 2
SERVICE = 0.02  # seconds of pg_sleep per lease
CAPACITY = SIZE / SERVICE  # 100 leases a second
CALLS = 180  # 0.6 s of arrivals at 3 x capacity


async def test_at_three_times_capacity_refused_callers_are_overloaded_and_admitted_stay_fifo(
    pg_url: str,
) -> None:
    pool = DatabaseConnectionPool(
        ConnectionPoolConfig(
            pool_name="overload",
            min_size=SIZE,
            max_size=SIZE,
            connection_timeout=10.0,
            health_check_interval=0,
            queue_target=0.01,
            queue_interval=0.1,
        ),
        pg_url,
    )
    await pool.initialize()
    granted: list[int] = []  # arrival numbers, in the order the pool granted them
    outcomes: dict[str, int] = {"served": 0, "overloaded": 0}
    dropping_seen = False
    numbers = itertools.count()

    async def call() -> None:
        nonlocal dropping_seen
        number = next(numbers)  # arrival order: the order __aenter__ starts
        try:
            async with pool.get_connection() as session:
                granted.append(number)
                await session.execute(text("SELECT pg_sleep(:s)"), {"s": SERVICE})
            outcomes["served"] += 1
        except DatabasePoolOverloadedError as exc:
            assert exc.pool_name == "overload"
            outcomes["overloaded"] += 1
        dropping_seen = dropping_seen or pool.gate.dropping

    try:
        tasks = []
        for _ in range(CALLS):
            tasks.append(asyncio.create_task(call()))
            await asyncio.sleep(1 / (3 * CAPACITY))
        await asyncio.gather(*tasks)  # any other error (a timeout) fails the test here
    finally:
        await pool.close()

    assert dropping_seen
    assert outcomes["served"] + outcomes["overloaded"] == CALLS
    assert outcomes["overloaded"] > 0 and outcomes["served"] > 0
    # Admitted callers were served first come, first served: no one overtook.
    assert granted == sorted(granted)
    snapshot = pool.get_stats_snapshot()
    assert snapshot["pool_overloads"] == outcomes["overloaded"]
    assert snapshot["pool_exhaustions"] == 0
