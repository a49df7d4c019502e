"""DatabaseConnectionPool on real SQLite: in-memory and file databases through aiosqlite."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import UnboundExecutionError
from sqlalchemy.ext.asyncio import AsyncSession

from resync.core.exceptions import (
    DatabaseError,
    DatabasePoolClosedError,
    DatabasePoolNotInitializedError,
    DatabasePoolTimeoutError,
    DatabaseSetupError,
    PoolNotInitializedError,
)
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool

MEMORY = "sqlite+aiosqlite:///:memory:"
_CONFIG_FIELDS = {f.name for f in fields(ConnectionPoolConfig)}

MakePool = Callable[..., Awaitable[DatabaseConnectionPool]]


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    """Build (and by default initialize) pools; every one is closed after the test."""
    pools: list[DatabaseConnectionPool] = []

    async def make(
        url: str = MEMORY, *, initialize: bool = True, **kwargs: Any
    ) -> DatabaseConnectionPool:
        config_values: dict[str, Any] = {
            "pool_name": "sqlite",
            "min_size": 1,
            "max_size": 5,
            "connection_timeout": 5.0,
        }
        config_values.update({k: v for k, v in kwargs.items() if k in _CONFIG_FIELDS})
        options = {k: v for k, v in kwargs.items() if k not in _CONFIG_FIELDS}
        pool = DatabaseConnectionPool(ConnectionPoolConfig(**config_values), url, **options)
        pools.append(pool)
        if initialize:
            await pool.initialize()
        return pool

    yield make
    for pool in pools:
        await pool.close()


def file_url(tmp_path: Path, name: str = "app.db") -> str:
    return f"sqlite+aiosqlite:///{tmp_path / name}"


async def scalar(session: AsyncSession, sql: str) -> Any:
    return (await session.execute(text(sql))).scalar()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# --- the seed's scenarios ----------------------------------------------------------------


async def test_second_lease_times_out_when_max_size_is_one(make_pool: MakePool) -> None:
    pool = await make_pool(
        "sqlite:///:memory:", pool_name="test", min_size=1, max_size=1, connection_timeout=1
    )
    started = time.monotonic()
    async with pool.get_connection() as first:
        await first.execute(text("SELECT 1"))
        with pytest.raises(TimeoutError) as caught:
            async with pool.get_connection():
                pass
    assert time.monotonic() - started < 5
    assert isinstance(caught.value, DatabasePoolTimeoutError)
    assert str(caught.value).startswith("Timeout acquiring connection from pool 'test'")
    assert pool.get_stats_snapshot()["pool_exhaustions"] == 1


async def test_stats_track_leases_and_wait_times(make_pool: MakePool) -> None:
    pool = await make_pool()
    for _ in range(5):
        async with pool.get_connection() as session:
            await session.execute(text("SELECT 1"))
    assert pool.stats.pool_hits == 5
    assert len(pool._wait_times) == 5
    assert pool._wait_times.maxlen == pool.MAX_WAIT_TIMES
    await asyncio.gather(*(pool.increment_stat("pool_hits") for _ in range(100)))
    snapshot = pool.get_stats_snapshot()
    assert snapshot["pool_hits"] == 105
    assert snapshot["connection_errors"] == 0
    assert snapshot["active_connections"] == 0
    assert snapshot["backend"] == "database"
    assert snapshot["idle_connections"] == 1


async def test_no_connection_leaks_after_100_leases(make_pool: MakePool, tmp_path: Path) -> None:
    pool = await make_pool(file_url(tmp_path), max_size=4)
    for _ in range(100):
        async with pool.get_connection() as session:
            await session.execute(text("SELECT 1"))

    async def lease() -> None:
        async with pool.get_connection() as session:
            await session.execute(text("SELECT 1"))

    await asyncio.gather(*(lease() for _ in range(100)))
    stats = pool.get_stats_snapshot()
    assert stats["pool_hits"] == 200
    assert stats["active_connections"] == 0
    assert pool._gate.in_use == 0
    assert 1 <= stats["idle_connections"] <= 4
    open_now = stats["connection_creations"] - stats["connection_closures"]
    assert open_now == stats["idle_connections"]


async def test_lease_ending_in_an_error_leaves_the_pool_clean(make_pool: MakePool) -> None:
    pool = await make_pool(max_size=1)
    with pytest.raises(ValueError, match="boom"):
        async with pool.get_connection() as session:
            await session.execute(text("SELECT 1"))
            raise ValueError("boom")
    assert pool.stats.active_connections == 0
    assert pool._gate.in_use == 0
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT 1") == 1


async def test_error_in_the_lease_rolls_back_its_work(make_pool: MakePool) -> None:
    pool = await make_pool()
    async with pool.get_connection() as session:
        await session.execute(text("CREATE TABLE items (name TEXT)"))
    error = ValueError("business rule broken")
    with pytest.raises(ValueError) as caught:
        async with pool.get_connection() as session:
            await session.execute(text("INSERT INTO items VALUES ('lost')"))
            raise error
    assert caught.value is error
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT count(*) FROM items") == 0
    assert pool.stats.connection_errors == 0


async def test_committed_work_is_visible_in_a_new_lease(make_pool: MakePool) -> None:
    pool = await make_pool()
    async with pool.get_connection() as session:
        await session.execute(text("CREATE TABLE items (name TEXT)"))
        await session.execute(text("INSERT INTO items VALUES ('kept')"))
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT name FROM items") == "kept"


async def test_lease_before_initialize_is_refused(make_pool: MakePool) -> None:
    pool = await make_pool(initialize=False)
    with pytest.raises(DatabaseError) as caught:
        async with pool.get_connection():
            pass
    assert isinstance(caught.value, DatabasePoolNotInitializedError)
    assert isinstance(caught.value, PoolNotInitializedError)
    assert "not initialized" in str(caught.value)
    assert not pool._initialized


async def test_lease_after_close_is_refused(make_pool: MakePool) -> None:
    pool = await make_pool()
    await pool.close()
    assert pool._shutdown
    with pytest.raises(DatabasePoolClosedError, match="shutdown"):
        async with pool.get_connection():
            pass
    assert not await pool.health_check()


async def test_invalid_url_fails_initialize(make_pool: MakePool) -> None:
    pool = await make_pool("invalid://url", initialize=False)
    with pytest.raises(DatabaseSetupError, match=r"^Failed to setup pool 'sqlite'"):
        await pool.initialize()
    assert not pool._initialized


async def test_50_concurrent_leases_with_a_short_hold(make_pool: MakePool, tmp_path: Path) -> None:
    pool = await make_pool(file_url(tmp_path), max_size=10)
    active = peak = 0

    async def lease() -> int:
        nonlocal active, peak
        async with pool.get_connection() as session:
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            value = await scalar(session, "SELECT 1")
            active -= 1
            return int(value)

    assert await asyncio.gather(*(lease() for _ in range(50))) == [1] * 50
    assert peak <= 10
    stats = pool.get_stats_snapshot()
    assert stats["pool_exhaustions"] == 0
    assert stats["connection_errors"] == 0


# --- one in-memory database per pool -----------------------------------------------------------


async def test_memory_database_is_one_database_for_every_lease(make_pool: MakePool) -> None:
    pool = await make_pool(min_size=3, max_size=5)
    async with pool.get_connection() as session:
        await session.execute(text("CREATE TABLE events (n INTEGER)"))

    async def insert(n: int) -> None:
        async with pool.get_connection() as session:
            await session.execute(text("INSERT INTO events VALUES (:n)"), {"n": n})
            await asyncio.sleep(0)

    await asyncio.gather(*(insert(n) for n in range(20)))
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT count(*) FROM events") == 20


async def test_memory_pool_grants_one_lease_at_a_time(make_pool: MakePool) -> None:
    pool = await make_pool(min_size=2, max_size=5)
    active = peak = 0

    async def lease() -> None:
        nonlocal active, peak
        async with pool.get_connection() as session:
            active += 1
            peak = max(peak, active)
            await session.execute(text("SELECT 1"))
            await asyncio.sleep(0.001)
            active -= 1

    await asyncio.gather(*(lease() for _ in range(30)))
    assert peak == 1
    assert pool.get_stats_snapshot()["capacity"] == 1


async def test_two_memory_pools_do_not_share_a_database(make_pool: MakePool) -> None:
    first, second = await make_pool(), await make_pool()
    async with first.get_connection() as session:
        await session.execute(text("CREATE TABLE only_here (n INTEGER)"))
    with pytest.raises(DatabaseError, match="no such table"):
        async with second.get_connection() as session:
            await session.execute(text("SELECT * FROM only_here"))


async def test_memory_database_outlives_a_discarded_connection(make_pool: MakePool) -> None:
    pool = await make_pool()
    async with pool.get_connection() as session:
        await session.execute(text("CREATE TABLE kept (n INTEGER)"))
        await session.execute(text("INSERT INTO kept VALUES (1)"))
    with pytest.raises(RuntimeError):
        async with pool.get_connection() as session:
            await (await session.connection()).invalidate()
            raise RuntimeError("the connection is gone")
    assert pool.stats.connection_closures == 1
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT count(*) FROM kept") == 1


async def test_cancelled_lease_frees_its_slot_and_keeps_the_data(make_pool: MakePool) -> None:
    pool = await make_pool()
    async with pool.get_connection() as session:
        await session.execute(text("CREATE TABLE kept (n INTEGER)"))
        await session.execute(text("INSERT INTO kept VALUES (1)"))
    holding = asyncio.Event()

    async def hold() -> None:
        async with pool.get_connection() as session:
            await session.execute(text("INSERT INTO kept VALUES (2)"))
            holding.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(hold())
    await holding.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.stats.active_connections == 0
    assert pool._gate.in_use == 0
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT count(*) FROM kept") == 1


# --- transactions and errors ---------------------------------------------------------------------


async def test_sqlalchemy_error_becomes_a_counted_database_error(make_pool: MakePool) -> None:
    pool = await make_pool(pool_name="errors")
    with pytest.raises(DatabaseError) as caught:
        async with pool.get_connection() as session:
            await session.execute(text("SELECT * FROM no_such_table"))
    message = str(caught.value)
    assert message.startswith("Database operation failed: ")
    assert "no such table" in message
    assert "'errors'" in message
    assert caught.value.__context__ is None and caught.value.__cause__ is None
    snapshot = pool.get_stats_snapshot()
    assert (snapshot["server_errors"], snapshot["connection_errors"]) == (1, 0)
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT 1") == 1


async def test_failing_commit_raises_database_error_and_keeps_nothing(make_pool: MakePool) -> None:
    pool = await make_pool()
    async with pool.get_connection() as session:
        await session.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        await session.execute(
            text(
                "CREATE TABLE child (id INTEGER, parent_id INTEGER REFERENCES parent(id) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    with pytest.raises(DatabaseError, match="commit failed") as caught:
        async with pool.get_connection() as session:
            await session.execute(text("PRAGMA foreign_keys = ON"))
            await session.execute(text("INSERT INTO child VALUES (1, 999)"))
    assert "FOREIGN KEY constraint failed" in str(caught.value)
    snapshot = pool.get_stats_snapshot()
    assert (snapshot["server_errors"], snapshot["connection_errors"]) == (1, 0)
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT count(*) FROM child") == 0


async def test_session_cannot_be_used_after_its_lease(make_pool: MakePool) -> None:
    pool = await make_pool()
    async with pool.get_connection() as session:
        await session.execute(text("SELECT 1"))
    with pytest.raises(UnboundExecutionError):
        await session.execute(text("SELECT 1"))


async def test_objects_stay_readable_after_commit(make_pool: MakePool) -> None:
    pool = await make_pool()
    async with pool.get_connection() as session:
        assert not session.sync_session.expire_on_commit


async def test_isolation_level_set_by_a_lease_is_undone_for_the_next(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(file_url(tmp_path), min_size=1, max_size=1)
    async with pool.get_connection() as session:
        await session.connection(execution_options={"isolation_level": "READ UNCOMMITTED"})
        assert await scalar(session, "PRAGMA read_uncommitted") == 1
    async with pool.get_connection() as session:
        assert await scalar(session, "PRAGMA read_uncommitted") == 0
    assert pool.stats.connection_creations == 1


# --- file databases -------------------------------------------------------------------------------


async def test_file_database_runs_in_wal_mode_with_concurrent_leases(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(file_url(tmp_path), max_size=5)
    async with pool.get_connection() as session:
        assert await scalar(session, "PRAGMA journal_mode") == "wal"
        await session.execute(text("CREATE TABLE hits (n INTEGER)"))

    async def write_then_read(n: int) -> int:
        async with pool.get_connection() as session:
            await session.execute(text("INSERT INTO hits VALUES (:n)"), {"n": n})
        async with pool.get_connection() as session:
            return int(await scalar(session, "SELECT count(*) FROM hits"))

    counts = await asyncio.gather(*(write_then_read(n) for n in range(25)))
    assert max(counts) == 25
    assert pool.stats.connection_errors == 0


async def test_locked_database_is_a_database_error_naming_the_pool(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(file_url(tmp_path), pool_name="locky", connect_args={"timeout": 0.1})
    async with pool.get_connection() as session:
        await session.execute(text("CREATE TABLE t (n INTEGER)"))
    writing = asyncio.Event()
    release = asyncio.Event()

    async def hold_the_write_lock() -> None:
        async with pool.get_connection() as session:
            await session.execute(text("INSERT INTO t VALUES (1)"))
            writing.set()
            await release.wait()

    holder = asyncio.create_task(hold_the_write_lock())
    await writing.wait()
    with pytest.raises(DatabaseError) as caught:
        async with pool.get_connection() as session:
            await session.execute(text("INSERT INTO t VALUES (2)"))
    release.set()
    await holder
    assert "database is locked" in str(caught.value)
    assert "'locky'" in str(caught.value)
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT count(*) FROM t") == 1


# --- sizes and lifetimes --------------------------------------------------------------------------


async def test_min_size_connections_are_open_after_initialize(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(file_url(tmp_path), min_size=3, max_size=5)
    stats = pool.get_stats_snapshot()
    assert stats["idle_connections"] == 3
    assert stats["connection_creations"] == 3


async def test_concurrent_initialize_opens_min_size_once(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(file_url(tmp_path), min_size=2, initialize=False)
    await asyncio.gather(*(pool.initialize() for _ in range(50)))
    assert pool.stats.connection_creations == 2


async def test_idle_connections_above_min_size_close_after_idle_timeout(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(file_url(tmp_path), min_size=1, max_size=4, idle_timeout=0.2)
    all_in = asyncio.Barrier(4)

    async def lease() -> None:
        async with pool.get_connection() as session:
            await session.execute(text("SELECT 1"))
            await all_in.wait()

    await asyncio.gather(*(lease() for _ in range(4)))
    assert pool.get_stats_snapshot()["idle_connections"] == 4
    await wait_until(lambda: pool.get_stats_snapshot()["idle_connections"] == 1)
    await asyncio.sleep(0.5)
    stats = pool.get_stats_snapshot()
    assert stats["idle_connections"] == 1  # min_size stays open
    assert stats["connection_closures"] == 3


async def test_connections_are_replaced_after_max_lifetime(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(file_url(tmp_path), min_size=1, max_size=1, max_lifetime=0.3)

    async def driver_connection() -> object:
        async with pool.get_connection() as session:
            connection = await session.connection()
            return (await connection.get_raw_connection()).driver_connection

    first = await driver_connection()
    await asyncio.sleep(0.5)
    second = await driver_connection()
    assert second is not first
    assert pool.stats.connection_closures >= 1
    assert pool.stats.connection_errors == 0


async def test_lifetimes_are_jittered_so_connections_do_not_expire_together(
    make_pool: MakePool, tmp_path: Path
) -> None:
    before = time.monotonic()
    pool = await make_pool(file_url(tmp_path), min_size=5, max_size=5, max_lifetime=100)
    after = time.monotonic()
    deadlines = [held.expires_at for held in pool._stock.idle]
    assert len(set(deadlines)) == 5
    assert all(before + 95 <= d <= after + 100 for d in deadlines)  # kernel expiry: up to 5%


async def test_pre_ping_replaces_a_connection_that_died_while_idle(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(file_url(tmp_path), min_size=1, max_size=1, pool_pre_ping=True)
    async with pool.get_connection() as session:
        await session.execute(text("CREATE TABLE t (n INTEGER)"))
    dying = pool._stock.idle[-1].driver
    await dying.close()  # behind the pool's back
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT count(*) FROM t") == 0
        connection = await session.connection()
        assert (await connection.get_raw_connection()).driver_connection is not dying
    assert pool.stats.connection_errors == 0


@pytest.mark.resync_allow_leaks("pools")  # leaves its pool open on purpose
def test_memory_pool_never_closed_is_cleaned_up_when_its_loop_shuts_down() -> None:
    async def open_and_forget() -> None:
        config = ConnectionPoolConfig(pool_name="test", min_size=1, max_size=1)
        pool = DatabaseConnectionPool(config, "sqlite:///:memory:")
        await pool.initialize()
        async with pool.get_connection() as session:
            await session.execute(text("SELECT 1"))

    with asyncio.Runner() as runner:
        runner.run(open_and_forget())
    gc.collect()  # nothing is left for the collector to warn about


# --- health, options, close -----------------------------------------------------------------------


async def test_health_check_is_a_real_round_trip(make_pool: MakePool) -> None:
    pool = await make_pool()
    assert pool.stats.last_health_check is None
    assert await pool.health_check() is True
    assert pool.stats.last_health_check is not None


async def test_engine_options_reach_the_engine(make_pool: MakePool) -> None:
    pool = await make_pool(echo=True)
    assert pool.engine is not None
    assert pool.engine.echo is True


async def test_close_closes_every_connection(make_pool: MakePool, tmp_path: Path) -> None:
    pool = await make_pool(file_url(tmp_path), min_size=2, max_size=4)

    async def lease() -> None:
        async with pool.get_connection() as session:
            await session.execute(text("SELECT 1"))
            await asyncio.sleep(0.01)

    await asyncio.gather(*(lease() for _ in range(8)))
    await pool.close()
    stats = pool.get_stats_snapshot()
    assert stats["state"] == "closed"
    assert stats["idle_connections"] == 0
    assert stats["connection_closures"] == stats["connection_creations"]
    assert pool.engine is None
