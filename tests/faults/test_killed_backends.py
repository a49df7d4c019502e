"""Backends killed just before a checkout: which lease kinds hide it (issue 16).

``pg_terminate_backend`` of every connection of the pool, then a lease 0, 1
and 5 ms later, many times. The session (``get_connection``) and Core
(``connection``) leases trust a hot connection too, and send its ``BEGIN``
with the first statement; when that ``BEGIN`` finds the connection dead the
lease continues on a new one, so no caller sees the death (and with
``check="always"`` the ``BEGIN`` at checkout hides it). The driver lease trusts a connection
used in the last 0.5 s (no round trip): its first statement may fail, always
as the retry-safe ``DatabaseConnectionLostError`` (documented; the window's
price), and the pool recovers at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from resync.core.exceptions import DatabaseConnectionLostError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool

pytestmark = pytest.mark.postgres

DELAYS = (0.0, 0.001, 0.005)
TRIALS = 10


async def kill_all(admin: asyncpg.Connection, pool: DatabaseConnectionPool) -> None:
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        pool.application_name,
    )


@pytest.mark.parametrize("check", ["window", "always"])
@pytest.mark.parametrize("kind", ["session", "core"])
async def test_session_and_core_leases_never_see_a_backend_killed_before_checkout(
    kind: str, check: str, pg_url: str, pg_admin: asyncpg.Connection
) -> None:
    config = ConnectionPoolConfig(pool_name=f"killed-{kind}", min_size=2, max_size=2)
    pool = DatabaseConnectionPool(config, pg_url, circuit_breaker=False, check=check)
    async with pool:
        failures = 0
        for delay in DELAYS:
            for _ in range(TRIALS):
                async with pool.get_connection() as session:  # warm: both recently used
                    await session.execute(text("SELECT 1"))
                await kill_all(pg_admin, pool)
                await asyncio.sleep(delay)
                try:
                    lease: Any = pool.get_connection() if kind == "session" else pool.connection()
                    async with lease as conn:
                        assert (await conn.execute(text("SELECT 1"))).scalar() == 1
                except DatabaseConnectionLostError:
                    failures += 1
        assert failures == 0, f"{failures} of {len(DELAYS) * TRIALS} leases saw the kill"
        revived = pool.get_stats_snapshot()["details"]["revived_leases"]
        if check == "window":  # the hot path was taken, and found the dead connections
            assert revived > 0
        else:
            assert revived == 0


async def test_a_driver_lease_may_see_it_but_only_as_a_retry_safe_lost_connection(
    pg_url: str, pg_admin: asyncpg.Connection
) -> None:
    config = ConnectionPoolConfig(pool_name="killed-driver", min_size=1, max_size=1)
    async with DatabaseConnectionPool(config, pg_url, circuit_breaker=False) as pool:
        for delay in DELAYS:
            for _ in range(TRIALS):
                async with pool.driver_connection() as conn:
                    await conn.execute("SELECT 1")
                await kill_all(pg_admin, pool)
                await asyncio.sleep(delay)
                try:
                    async with pool.driver_connection() as conn:
                        await conn.execute("SELECT 1")
                except DatabaseConnectionLostError:
                    pass  # the next lease gets a fresh connection
                async with pool.driver_connection() as conn:
                    assert await conn.fetchval("SELECT 1") == 1
