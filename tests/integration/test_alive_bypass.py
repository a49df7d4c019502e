"""The alive-bypass window of the session and Core leases (issue 16).

A connection used within the last 0.5 s is handed out with no I/O; its
``BEGIN`` goes with the first statement. Seen from the server: an empty hot
lease leaves its backend untouched (``pg_stat_activity.state_change`` does
not move), a lease with a statement still runs it inside one transaction,
and ``check="always"`` (or no statement timeout) restores the ``BEGIN`` at
checkout.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from resync.core.exceptions import PoolConfigError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool

pytestmark = pytest.mark.postgres


async def backend_touched(admin: asyncpg.Connection, pool: DatabaseConnectionPool) -> datetime:
    """When the pool's only backend last changed state (a round trip moves it)."""
    value: datetime = await admin.fetchval(
        "SELECT state_change FROM pg_stat_activity WHERE application_name = $1",
        pool.application_name,
    )
    return value


def lease_of(pool: DatabaseConnectionPool, kind: str) -> Any:
    return pool.get_connection() if kind == "session" else pool.connection()


@pytest.mark.parametrize("kind", ["session", "core"])
async def test_an_empty_hot_lease_sends_nothing_to_the_server(
    kind: str, pg_url: str, admin: asyncpg.Connection
) -> None:
    config = ConnectionPoolConfig(pool_name=f"bypass-{kind}", min_size=1, max_size=1)
    async with DatabaseConnectionPool(config, pg_url) as pool:
        for _attempt in range(5):  # a starved machine may take longer than the window
            async with lease_of(pool, kind) as conn:
                await conn.execute(text("SELECT 1"))  # now hot
            started = time.monotonic()
            before = await backend_touched(admin, pool)
            for _ in range(5):
                async with lease_of(pool, kind):
                    pass
            if time.monotonic() - started < 0.4:
                break
        assert time.monotonic() - started < 0.4, "never ran inside the window"
        assert await backend_touched(admin, pool) == before
        async with lease_of(pool, kind) as conn:  # and it still works
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        assert await backend_touched(admin, pool) > before


@pytest.mark.parametrize("kind", ["session", "core"])
async def test_a_hot_lease_still_runs_in_one_transaction(
    kind: str, pg_url: str, table: str
) -> None:
    config = ConnectionPoolConfig(pool_name=f"bypass-tx-{kind}", min_size=1, max_size=1)
    async with DatabaseConnectionPool(config, pg_url) as pool:
        async with lease_of(pool, kind) as conn:
            await conn.execute(text("SELECT 1"))
        with pytest.raises(RuntimeError):
            async with lease_of(pool, kind) as conn:
                await conn.execute(text(f"INSERT INTO {table} VALUES ('gone')"))
                txid = (await conn.execute(text("SELECT txid_current()"))).scalar()
                again = (await conn.execute(text("SELECT txid_current()"))).scalar()
                assert txid == again  # both statements inside one BEGIN
                raise RuntimeError("roll it back")
        async with lease_of(pool, kind) as conn:
            assert (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar() == 0


@pytest.mark.parametrize(
    ("options", "window"),
    [({}, 0.5), ({"check": "always"}, 0.0), ({"statement_timeout": None}, 0.0)],
)
async def test_the_window_is_off_with_check_always_or_without_a_statement_timeout(
    options: dict[str, Any], window: float, pg_url: str, admin: asyncpg.Connection
) -> None:
    config = ConnectionPoolConfig(pool_name="bypass-off", min_size=1, max_size=1)
    async with DatabaseConnectionPool(config, pg_url, **options) as pool:
        assert pool.get_stats_snapshot()["details"]["alive_bypass_window"] == window
        async with pool.get_connection() as session:
            await session.execute(text("SELECT 1"))
        before = await backend_touched(admin, pool)
        await asyncio.sleep(0.01)  # state_change has microsecond resolution
        async with pool.get_connection():
            pass
        touched = await backend_touched(admin, pool) != before
        assert touched is (window == 0.0)  # off: the checkout's BEGIN is a round trip


def test_a_bad_check_names_the_pool_and_the_choices(pg_url: str) -> None:
    config = ConnectionPoolConfig(pool_name="bypass-bad", min_size=1, max_size=1)
    with pytest.raises(PoolConfigError, match=r"check must be one of window, always.*bypass-bad"):
        DatabaseConnectionPool(config, pg_url, check="sometimes")


async def test_objects_added_without_a_statement_are_still_committed(
    pg_url: str, admin: asyncpg.Connection
) -> None:
    name = f"bypass_orm_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, v text)")
    try:

        class Base(DeclarativeBase):
            pass

        class Row(Base):
            __tablename__ = name
            id: Mapped[int] = mapped_column(primary_key=True)
            v: Mapped[str]

        config = ConnectionPoolConfig(pool_name="bypass-orm", min_size=1, max_size=1)
        async with DatabaseConnectionPool(config, pg_url) as pool:
            async with pool.get_connection() as session:
                await session.execute(text("SELECT 1"))  # hot
            async with pool.get_connection() as session:
                session.add(Row(v="kept"))  # no statement yet: the commit flushes it
        assert await admin.fetchval(f"SELECT v FROM {name}") == "kept"
    finally:
        await admin.execute(f"DROP TABLE {name}")


async def test_options_set_on_an_untouched_core_lease_are_undone(pg_url: str) -> None:
    config = ConnectionPoolConfig(pool_name="bypass-options", min_size=1, max_size=1)
    async with DatabaseConnectionPool(config, pg_url) as pool:
        async with pool.connection() as conn:
            await conn.execute(text("SELECT 1"))  # hot
        async with pool.connection() as conn:
            await conn.execution_options(isolation_level="SERIALIZABLE")
        async with pool.connection() as conn:
            level = (await conn.execute(text("SHOW transaction_isolation"))).scalar()
        assert level == "read committed"
