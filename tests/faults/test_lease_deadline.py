"""A caller's deadline is the caller's: issue 15.2.

``max_size=1``, ``connection_timeout=0.3`` and 100 ms of latency each way: a
waiter handed the slot with almost no time left runs out of time while its
connection is validated (the transaction's BEGIN). That is a lease timeout --
counted as one -- and the healthy connection stays in the pool.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from resync.core.exceptions import DatabasePoolTimeoutError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from tests.faults.conftest import proxied_pg_url
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.postgres


async def test_a_waiter_out_of_time_during_validation_is_a_timeout_and_costs_no_connection(
    pg_url: str, pg_proxy: FaultProxy
) -> None:
    config = ConnectionPoolConfig(
        pool_name="deadline", min_size=1, max_size=1, connection_timeout=0.3
    )
    # check="always": the scenario needs the checkout's validation (BEGIN) to run.
    pool = DatabaseConnectionPool(config, proxied_pg_url(pg_url, pg_proxy), check="always")
    await pool.initialize()
    try:
        pg_proxy.set_latency(to_server=0.05, to_client=0.05)
        timeouts = 0
        rounds = 6
        for hold in (0.13, 0.14, 0.15, 0.16, 0.17, 0.18)[:rounds]:
            holder_has_it = asyncio.Event()

            async def holder(hold: float = hold, has_it: asyncio.Event = holder_has_it) -> None:
                # Acquire costs one round trip (BEGIN, 0.1 s), release one
                # (ROLLBACK): the waiter gets the slot 0.1 + hold s after it
                # started, with < 0.1 s -- less than its own BEGIN -- left.
                async with pool.get_connection():
                    has_it.set()
                    await asyncio.sleep(hold)

            async def waiter(has_it: asyncio.Event = holder_has_it) -> bool:
                async with asyncio.timeout(5):  # the holder failing must not hang the test
                    await has_it.wait()
                try:
                    async with pool.get_connection() as session:
                        await session.execute(text("SELECT 1"))
                except DatabasePoolTimeoutError:
                    return False
                return True

            holding = asyncio.ensure_future(holder())
            try:
                served = await waiter()
            finally:
                await holding  # a holder that got no connection fails the test here
            timeouts += not served
            await asyncio.sleep(0.4)  # a late validation may finish in the background
        stats = pool.get_stats_snapshot()
        assert timeouts >= 1, "the scenario did not make a waiter run out of time"
        assert stats["connection_errors"] == 0, stats
        assert stats["pool_exhaustions"] == timeouts, stats
        # The one healthy connection was never thrown away for a caller's deadline.
        assert stats["connection_creations"] == 1, stats
        pg_proxy.set_latency()
        async with pool.get_connection() as session:
            assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
        assert pool.get_stats_snapshot()["connection_creations"] == 1
    finally:
        pg_proxy.set_latency()
        await pool.close()
