"""Replacing every connection of the database pool: ``drain()`` and SQLSTATE 25006.

On the shared PostgreSQL: connections are told apart by their backend pid,
and a read-only error is produced without touching the server's settings
(``SET TRANSACTION READ ONLY`` inside the lease).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from resync.core.exceptions import DatabaseError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[DatabaseConnectionPool]:
    config = ConnectionPoolConfig(
        pool_name="replaced", min_size=3, max_size=3, connection_timeout=5.0
    )
    async with DatabaseConnectionPool(config, pg_url) as opened:
        yield opened


@pytest.fixture
async def table(admin: asyncpg.Connection) -> AsyncIterator[str]:
    name = f"replaced_{uuid.uuid4().hex[:10]}"
    await admin.execute(f"CREATE TABLE {name} (n int)")
    yield name
    await admin.execute(f"DROP TABLE {name}")


async def pid(session: AsyncSession) -> int:
    return int(await session.scalar(text("SELECT pg_backend_pid()")))  # type: ignore[arg-type]


async def all_pids(pool: DatabaseConnectionPool) -> set[int]:
    """The backend pid of every connection, leased all at once."""
    hold = asyncio.Barrier(pool.config.max_size)

    async def one() -> int:
        async with pool.get_connection() as session:
            value = await pid(session)
            await hold.wait()
            return value

    return set(await asyncio.gather(*(one() for _ in range(pool.config.max_size))))


async def server_pids(admin: asyncpg.Connection, pool: DatabaseConnectionPool) -> set[int]:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", pool.application_name
    )
    return {row["pid"] for row in rows}


async def test_drain_replaces_idle_connections_spread_over_the_interval(
    pool: DatabaseConnectionPool, admin: asyncpg.Connection
) -> None:
    before = await all_pids(pool)
    started = time.monotonic()
    assert await pool.drain(0.3) == 3
    assert time.monotonic() - started >= 0.25  # spread, not all at once
    after = await server_pids(admin, pool)
    assert len(after) == 3 and not after & before
    assert await all_pids(pool) == after
    assert pool.get_stats_snapshot()["details"]["replacements"] == 1


async def test_drain_replaces_a_leased_connection_when_its_lease_ends(
    pool: DatabaseConnectionPool, admin: asyncpg.Connection
) -> None:
    async with pool.get_connection() as session:
        held = await pid(session)
        await pool.drain(0)
        assert await pid(session) == held  # a lease is never cut by a drain
    assert held not in await server_pids(admin, pool)
    assert held not in await all_pids(pool)


async def test_read_only_error_retires_every_connection_once(
    pool: DatabaseConnectionPool,
    admin: asyncpg.Connection,
    table: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="resync.pool")
    before = await all_pids(pool)
    release = asyncio.Event()

    async def write_read_only() -> None:
        async with pool.get_connection() as session:
            await session.execute(text("SET TRANSACTION READ ONLY"))
            await release.wait()  # all three fail together, a burst
            await session.execute(text(f"INSERT INTO {table} VALUES (1)"))

    burst = [asyncio.create_task(write_read_only()) for _ in range(3)]
    while pool.stats.active_connections < 3:
        await asyncio.sleep(0.01)
    release.set()
    errors = await asyncio.gather(*burst, return_exceptions=True)
    assert all(isinstance(e, DatabaseError) and "read-only" in str(e) for e in errors), errors
    details = pool.get_stats_snapshot()["details"]
    assert details["read_only_errors"] == 3
    assert details["replacements"] == 1
    assert sum("SQLSTATE 25006" in r.getMessage() for r in caplog.records) == 1
    # Every connection of before the error is gone, on the server too.
    deadline = time.monotonic() + 5
    while await server_pids(admin, pool) & before:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert not await all_pids(pool) & before
    async with pool.get_connection() as session:
        await session.execute(text(f"INSERT INTO {table} VALUES (2)"))
    assert await admin.fetchval(f"SELECT count(*) FROM {table}") == 1


async def test_other_errors_retire_nothing(pool: DatabaseConnectionPool, table: str) -> None:
    before = await all_pids(pool)
    with pytest.raises(DatabaseError):
        async with pool.get_connection() as session:
            await session.execute(text(f"INSERT INTO {table} VALUES ('not a number')"))
    assert pool.get_stats_snapshot()["details"]["replacements"] == 0
    assert await all_pids(pool) == before
