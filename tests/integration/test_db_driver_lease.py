"""``pool.driver_connection()``: asyncpg's (or aiosqlite's) own connection, under the pool's rules.

Against the shared PostgreSQL (and SQLite): autocommit, an open transaction
rolled back at release, a cancelled statement discards its connection, the
errors are the pool's, a hot lease sends nothing, a cold one checks first.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiosqlite
import asyncpg
import pytest

from resync.core.exceptions import (
    DatabaseError,
    DatabasePoolClosedError,
    DatabaseStatementTimeoutError,
)
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool

pytestmark = pytest.mark.postgres


def make(url: str, **options: Any) -> DatabaseConnectionPool:
    config = ConnectionPoolConfig(pool_name="driver", min_size=1, max_size=2, connection_timeout=5)
    return DatabaseConnectionPool(config, url, **options)


async def test_it_is_asyncpg_in_autocommit_and_a_left_transaction_is_rolled_back(
    pg_url: str, admin: asyncpg.Connection, table: str
) -> None:
    async with make(pg_url) as pool:
        async with pool.driver_connection() as conn:
            assert isinstance(conn, asyncpg.Connection)
            await conn.execute(f"INSERT INTO {table} VALUES ('autocommitted')")
            assert await admin.fetchval(f"SELECT count(*) FROM {table}") == 1  # no COMMIT needed
        async with pool.driver_connection() as conn:
            await conn.execute("BEGIN")
            await conn.execute(f"INSERT INTO {table} VALUES ('left open')")
        async with pool.driver_connection() as conn:
            assert not conn.is_in_transaction()
        assert await admin.fetchval(f"SELECT count(*) FROM {table}") == 1
        async with pool.driver_connection() as conn, conn.transaction():
            await conn.execute(f"INSERT INTO {table} VALUES ('in a transaction')")
        assert await admin.fetchval(f"SELECT count(*) FROM {table}") == 2
        stats = pool.get_stats_snapshot()
        assert stats["pool_hits"] == 4 and stats["active_connections"] == 0


async def test_errors_are_the_pools_and_a_cancelled_statement_discards_its_connection(
    pg_url: str,
) -> None:
    async with make(pg_url, statement_timeout=0.3) as pool:
        with pytest.raises(DatabaseError, match="SQLSTATE 42601") as caught:
            async with pool.driver_connection() as conn:
                await conn.execute("SELEC 1")
        assert caught.value.__cause__ is None and caught.value.__context__ is None
        with pytest.raises(DatabaseStatementTimeoutError, match="pool 'driver'"):
            async with pool.driver_connection() as conn:
                await conn.execute("SELECT pg_sleep(2)")
        closures = pool.stats.connection_closures
        holding = asyncio.Event()

        async def sleeper() -> None:
            async with pool.driver_connection() as conn:
                holding.set()
                await conn.execute("SELECT pg_sleep(0.2)")

        task = asyncio.ensure_future(sleeper())
        await holding.wait()
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.05)
        assert pool.stats.connection_closures > closures  # unknown state: not reused
        async with pool.driver_connection() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        stats = pool.get_stats_snapshot()
        assert stats["server_errors"] == 1
        assert stats["active_connections"] == 0 and pool.gate.in_use == 0


async def last_query(admin: asyncpg.Connection, pid: int) -> str:
    return str(await admin.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid))


async def test_a_hot_lease_sends_nothing_and_a_cold_one_checks_first(
    pg_url: str, admin: asyncpg.Connection
) -> None:
    config = ConnectionPoolConfig(pool_name="hot", min_size=1, max_size=1)
    async with DatabaseConnectionPool(config, pg_url) as pool:
        async with pool.driver_connection() as conn:
            pid = conn.get_server_pid()
            await conn.execute("SELECT 'marker-hot'")
        async with pool.driver_connection() as conn:  # used 0 s ago: no I/O at checkout
            assert conn.get_server_pid() == pid
        assert await last_query(admin, pid) == "SELECT 'marker-hot'"
        await asyncio.sleep(0.6)  # past the 0.5 s window
        async with pool.driver_connection():
            pass
        assert await last_query(admin, pid) != "SELECT 'marker-hot'"  # it was checked


async def test_the_reset_hook_runs_at_every_release(pg_url: str) -> None:
    resets = 0

    async def reset(conn: asyncpg.Connection) -> None:
        nonlocal resets
        resets += 1
        await conn.execute("RESET ALL")

    async with make(pg_url, driver_reset=reset) as pool:
        async with pool.driver_connection() as conn:
            await conn.execute("SET work_mem = '7MB'")
        async with pool.driver_connection() as conn:
            assert await conn.fetchval("SHOW work_mem") != "7MB"
    assert resets == 2


async def test_sqlite_gives_aiosqlite_and_a_closed_pool_refuses() -> None:
    pool = make("sqlite+aiosqlite:///:memory:")
    async with pool:
        async with pool.driver_connection() as conn:
            assert isinstance(conn, aiosqlite.Connection)
            await conn.execute("CREATE TABLE t (x int)")
            await conn.execute("INSERT INTO t VALUES (1)")
            await conn.commit()
        async with pool.driver_connection() as conn:
            rows = await (await conn.execute("SELECT x FROM t")).fetchall()
            assert [tuple(r) for r in rows] == [(1,)]
    with pytest.raises(DatabasePoolClosedError):
        async with pool.driver_connection():
            pass


async def test_a_killed_backend_fails_the_next_lease_as_lost_never_as_a_server_error(
    pg_url: str, admin: asyncpg.Connection
) -> None:
    """The alive-bypass window's price, documented: retry-safe, typed, counted as lost."""
    from resync.core.exceptions import DatabaseConnectionLostError

    config = ConnectionPoolConfig(pool_name="killed", min_size=1, max_size=1)
    async with DatabaseConnectionPool(config, pg_url, circuit_breaker=False) as pool:
        lost = 0
        for delay in (0.0, 0.001, 0.005, 0.05):
            async with pool.driver_connection() as conn:
                pid = conn.get_server_pid()
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            await asyncio.sleep(delay)
            try:
                async with pool.driver_connection() as conn:
                    assert await conn.fetchval("SELECT 1") == 1
            except DatabaseConnectionLostError:
                lost += 1
        stats = pool.get_stats_snapshot()
        assert (stats["connection_errors"], stats["server_errors"]) == (lost, 0)
        async with pool.driver_connection() as conn:
            assert await conn.fetchval("SELECT 1") == 1


async def test_a_release_with_nothing_to_send_arms_no_timer(pg_url: str) -> None:
    # A caller that never yields (hot leases send nothing) must not pile up timers:
    # each cancelled asyncio.timeout() stays in the loop's heap until the loop runs,
    # which grew RSS by 200 MB over a million leases (artifacts/rss_leases.md).
    config = ConnectionPoolConfig(pool_name="driver-timers", min_size=1, max_size=1)
    async with DatabaseConnectionPool(config, pg_url) as pool:
        async with pool.driver_connection() as conn:
            await conn.execute("SELECT 1")  # hot from here on
        loop = asyncio.get_running_loop()
        scheduled = loop._scheduled  # type: ignore[attr-defined]  # asyncio's timer heap
        before = len(scheduled)
        for _ in range(200):
            async with pool.driver_connection():
                pass
        assert len(scheduled) - before < 10
