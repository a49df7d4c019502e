"""``pool.connection()``: SQLAlchemy Core's AsyncConnection; commit on success, else rollback."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from resync.core.exceptions import (
    DatabaseCommitUnknownError,
    DatabaseConnectionLostError,
    DatabaseError,
)
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool

pytestmark = pytest.mark.postgres


def make(url: str) -> DatabaseConnectionPool:
    config = ConnectionPoolConfig(pool_name="core", min_size=1, max_size=2, connection_timeout=5)
    return DatabaseConnectionPool(config, url, circuit_breaker=False)


async def count(admin: asyncpg.Connection, table: str) -> int:
    return int(await admin.fetchval(f"SELECT count(*) FROM {table}"))


async def test_commit_on_success_rollback_on_error(
    pg_url: str, admin: asyncpg.Connection, table: str
) -> None:
    async with make(pg_url) as pool:
        async with pool.connection() as conn:
            assert isinstance(conn, AsyncConnection)
            await conn.execute(text(f"INSERT INTO {table} VALUES (1)"))
        assert await count(admin, table) == 1
        with pytest.raises(RuntimeError):
            async with pool.connection() as conn:
                await conn.execute(text(f"INSERT INTO {table} VALUES (2)"))
                raise RuntimeError("the caller's own error passes unchanged")
        assert await count(admin, table) == 1
        async with pool.connection():  # an empty lease commits nothing, breaks nothing
            pass
        with pytest.raises(DatabaseError, match="SQLSTATE 42601"):
            async with pool.connection() as conn:
                await conn.execute(text("SELEC 1"))
        stats = pool.get_stats_snapshot()
        assert stats["server_errors"] == 1 and stats["active_connections"] == 0
        async with pool.connection() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1


async def test_a_refused_commit_and_a_connection_lost_before_it(
    pg_url: str, admin: asyncpg.Connection
) -> None:
    parent, child = f"parent_{uuid.uuid4().hex[:8]}", f"child_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE TABLE {parent} (id int PRIMARY KEY)")
    await admin.execute(
        f"CREATE TABLE {child} (p int REFERENCES {parent}(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    try:
        async with make(pg_url) as pool:
            with pytest.raises(DatabaseError, match="commit failed") as caught:
                async with pool.connection() as conn:
                    await conn.execute(text(f"INSERT INTO {child} VALUES (999)"))
            assert not isinstance(caught.value, DatabaseCommitUnknownError)
            assert await count(admin, child) == 0
            with pytest.raises(DatabaseConnectionLostError):
                async with pool.connection() as conn:
                    await conn.execute(text(f"INSERT INTO {parent} VALUES (1)"))
                    pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
                    await admin.execute("SELECT pg_terminate_backend($1)", pid)
                    await asyncio.sleep(0.2)
            assert await count(admin, parent) == 0
            async with pool.connection() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await admin.execute(f"DROP TABLE IF EXISTS {child}, {parent}")


async def test_sqlite_core_lease_works_too() -> None:
    async with make("sqlite+aiosqlite:///:memory:") as pool:
        async with pool.connection() as conn:
            await conn.execute(text("CREATE TABLE t (x int)"))
            await conn.execute(text("INSERT INTO t VALUES (5)"))
        async with pool.connection() as conn:
            assert (await conn.execute(text("SELECT x FROM t"))).scalar() == 5
