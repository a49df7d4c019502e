"""DatabaseConnectionPool against a real PostgreSQL (asyncpg).

The shared server (``pg_url``) is only read from and given throwaway tables;
tests that must restart a server or check passwords start their own cluster
(:mod:`tests.helpers.pg_cluster`). The pool's backends are found in
``pg_stat_activity`` by the pool's unique ``application_name``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import socket
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import fields
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from resync.core.exceptions import (
    DatabaseError,
    DatabasePoolTimeoutError,
    DatabaseSetupError,
    PoolTimeoutError,
)
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from tests.helpers.pg_cluster import PgCluster

pytestmark = pytest.mark.postgres

_CONFIG_FIELDS = {f.name for f in fields(ConnectionPoolConfig)}
MakePool = Callable[..., Awaitable[DatabaseConnectionPool]]


def _connect_kwargs(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    return {
        "host": parsed.host,
        "port": parsed.port or 5432,
        "user": parsed.username,
        "password": parsed.password,
        "database": parsed.database,
    }


@pytest.fixture
async def admin(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw asyncpg connection outside any pool, to watch and kill backends."""
    conn = await asyncpg.connect(**_connect_kwargs(pg_url))
    yield conn
    await conn.close()


@pytest.fixture
async def make_pool(pg_url: str) -> AsyncIterator[MakePool]:
    """Build (and by default initialize) pools; every one is closed after the test."""
    pools: list[DatabaseConnectionPool] = []

    async def make(
        url: object = None, *, initialize: bool = True, **kwargs: Any
    ) -> DatabaseConnectionPool:
        values: dict[str, Any] = {
            "pool_name": "pg",
            "min_size": 1,
            "max_size": 5,
            "connection_timeout": 5.0,
        }
        values.update({k: v for k, v in kwargs.items() if k in _CONFIG_FIELDS})
        options = {k: v for k, v in kwargs.items() if k not in _CONFIG_FIELDS}
        config = ConnectionPoolConfig(**values)
        pool = DatabaseConnectionPool(config, url or pg_url, **options)
        pools.append(pool)
        if initialize:
            await pool.initialize()
        return pool

    yield make
    for pool in pools:
        await pool.close()


@pytest.fixture
async def table(admin: asyncpg.Connection) -> AsyncIterator[str]:
    """A unique table name with an ``items(name text)`` table, dropped afterwards."""
    name = f"items_{uuid.uuid4().hex[:12]}"
    await admin.execute(f"CREATE TABLE {name} (name text)")
    yield name
    await admin.execute(f"DROP TABLE IF EXISTS {name}")


async def backends(admin: asyncpg.Connection, pool: DatabaseConnectionPool) -> int:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
    return int(await admin.fetchval(sql, pool.application_name))


async def wait_for_backends(
    admin: asyncpg.Connection, pool: DatabaseConnectionPool, expected: int, timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while (count := await backends(admin, pool)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} backends, expected {expected}")
        await asyncio.sleep(0.05)


async def scalar(session: AsyncSession, sql: str) -> Any:
    return (await session.execute(text(sql))).scalar()


@pytest.fixture
def tarpit() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a hung server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


# --- a lease holds a real connection -------------------------------------------------------------


async def test_min_size_connections_are_open_after_initialize(
    make_pool: MakePool, admin: asyncpg.Connection
) -> None:
    pool = await make_pool(min_size=3, max_size=5)
    assert await backends(admin, pool) == 3
    assert pool.get_stats_snapshot()["idle_connections"] == 3


async def test_each_lease_holds_its_own_server_connection(
    make_pool: MakePool, admin: asyncpg.Connection
) -> None:
    pool = await make_pool(min_size=1, max_size=4)
    all_in = asyncio.Barrier(5)

    async def lease() -> int:
        async with pool.get_connection() as session:
            pid = int(await scalar(session, "SELECT pg_backend_pid()"))
            await all_in.wait()
            await all_in.wait()
            return pid

    leases = asyncio.gather(*(lease() for _ in range(4)))
    await all_in.wait()
    assert await backends(admin, pool) == 4
    await all_in.wait()
    assert len(set(await leases)) == 4


async def test_second_lease_times_out_when_max_size_is_one(make_pool: MakePool) -> None:
    pool = await make_pool(pool_name="solo", min_size=1, max_size=1, connection_timeout=0.5)
    async with pool.get_connection() as session:
        await session.execute(text("SELECT 1"))
        started = time.monotonic()
        with pytest.raises(DatabasePoolTimeoutError) as caught:
            async with pool.get_connection():
                pass
        assert time.monotonic() - started < 5
    assert isinstance(caught.value, TimeoutError)
    assert str(caught.value).startswith("Timeout acquiring connection from pool 'solo'")


async def test_application_name_identifies_the_pool(make_pool: MakePool) -> None:
    pool = await make_pool()
    async with pool.get_connection() as session:
        assert await scalar(session, "SHOW application_name") == pool.application_name


async def test_url_may_be_a_secret_str_or_a_sync_driver_url(
    make_pool: MakePool, pg_url: str
) -> None:
    for url in (SecretStr(pg_url), pg_url.replace("postgresql+asyncpg", "postgresql")):
        pool = await make_pool(url)
        async with pool.get_connection() as session:
            assert await scalar(session, "SELECT 1") == 1


# --- transactions ---------------------------------------------------------------------------------


async def test_failed_transaction_leaves_no_row(make_pool: MakePool, table: str) -> None:
    pool = await make_pool()
    with pytest.raises(KeyError):
        async with pool.get_connection() as session:
            await session.execute(text(f"INSERT INTO {table} VALUES ('lost')"))
            raise KeyError("rolled back")
    async with pool.get_connection() as session:
        assert await scalar(session, f"SELECT count(*) FROM {table}") == 0


async def test_committed_transaction_is_visible_in_a_new_lease(
    make_pool: MakePool, table: str, admin: asyncpg.Connection
) -> None:
    pool = await make_pool()
    async with pool.get_connection() as session:
        await session.execute(text(f"INSERT INTO {table} VALUES ('kept')"))
    async with pool.get_connection() as session:
        assert await scalar(session, f"SELECT name FROM {table}") == "kept"
    assert await admin.fetchval(f"SELECT count(*) FROM {table}") == 1


async def test_sql_error_is_a_counted_database_error_and_the_connection_is_reused(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    async with pool.get_connection() as session:
        pid = await scalar(session, "SELECT pg_backend_pid()")
    with pytest.raises(DatabaseError) as caught:
        async with pool.get_connection() as session:
            await session.execute(text("SELEC 1"))
    assert str(caught.value).startswith("Database operation failed: ")
    # Class and SQLSTATE only: the driver's text may quote a bound value, and no
    # traceback prints the driver's error.
    assert "ProgrammingError, SQLSTATE 42601: syntax error" in str(caught.value)
    # Nothing of the driver's error is in the chain: an error reporter walking
    # __cause__/__context__ finds no statement and no bound value (issue 15.6).
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert "[SQL:" not in "".join(traceback.format_exception(caught.value))
    stats = pool.get_stats_snapshot()
    assert (stats["server_errors"], stats["connection_errors"]) == (1, 0)  # an answer, not a loss
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT pg_backend_pid()") == pid


async def test_failing_commit_raises_database_error_and_keeps_nothing(
    make_pool: MakePool, admin: asyncpg.Connection
) -> None:
    parent, child = f"parent_{uuid.uuid4().hex[:10]}", f"child_{uuid.uuid4().hex[:10]}"
    await admin.execute(f"CREATE TABLE {parent} (id int PRIMARY KEY)")
    await admin.execute(
        f"CREATE TABLE {child} "
        f"(parent_id int REFERENCES {parent}(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    try:
        pool = await make_pool()
        with pytest.raises(DatabaseError, match="commit failed") as caught:
            async with pool.get_connection() as session:
                await session.execute(text(f"INSERT INTO {child} VALUES (999)"))
        assert "foreign key" in str(caught.value)
        stats = pool.get_stats_snapshot()
        assert (stats["server_errors"], stats["connection_errors"]) == (1, 0)  # the server's answer
        async with pool.get_connection() as session:
            assert await scalar(session, f"SELECT count(*) FROM {child}") == 0
    finally:
        await admin.execute(f"DROP TABLE {child}; DROP TABLE {parent}")


async def test_failing_rollback_does_not_hide_the_original_error(
    make_pool: MakePool, admin: asyncpg.Connection, table: str
) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    original = ValueError("the error that matters")
    with pytest.raises(ValueError) as caught:
        async with pool.get_connection() as session:
            await session.execute(text(f"INSERT INTO {table} VALUES ('lost')"))
            pid = await scalar(session, "SELECT pg_backend_pid()")
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            raw = (await (await session.connection()).get_raw_connection()).driver_connection
            while not raw.is_closed():
                await asyncio.sleep(0.01)
            raise original
    assert caught.value is original
    assert pool.get_stats_snapshot()["active_connections"] == 0
    async with pool.get_connection() as session:
        assert await scalar(session, f"SELECT count(*) FROM {table}") == 0
    await wait_for_backends(admin, pool, 1)


async def test_execution_options_set_by_a_lease_do_not_reach_the_next(
    make_pool: MakePool, admin: asyncpg.Connection
) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    schema = f"tenant_{uuid.uuid4().hex[:10]}"
    await admin.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.marker (n int)")
    try:
        for _ in range(3):
            async with pool.get_connection() as session:
                await session.connection(
                    execution_options={
                        "isolation_level": "SERIALIZABLE",
                        "schema_translate_map": {"tenant": schema},
                    }
                )
                assert await scalar(session, "SHOW transaction_isolation") == "serializable"
            async with pool.get_connection() as session:
                assert await scalar(session, "SHOW transaction_isolation") == "read committed"
                connection = await session.connection()
                assert (
                    "schema_translate_map" not in connection.sync_connection.get_execution_options()
                )
        assert pool.stats.connection_creations == 1  # reset in place, not reconnected
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")


async def test_lease_that_runs_nothing_leaves_no_open_transaction(
    make_pool: MakePool, admin: asyncpg.Connection
) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    async with pool.get_connection():
        pass
    states = await admin.fetch(
        "SELECT state FROM pg_stat_activity WHERE application_name = $1", pool.application_name
    )
    assert [row["state"] for row in states] == ["idle"]


async def test_isolation_levels_still_apply(make_pool: MakePool) -> None:
    pool = await make_pool(isolation_level="REPEATABLE READ")
    async with pool.get_connection() as session:
        assert await scalar(session, "SHOW transaction_isolation") == "repeatable read"
    async with pool.get_connection() as session:
        await session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
        assert await scalar(session, "SHOW transaction_isolation") == "serializable"
    async with pool.get_connection() as session:  # the next lease gets the default back
        assert await scalar(session, "SHOW transaction_isolation") == "repeatable read"
    autocommit = await make_pool(isolation_level="AUTOCOMMIT")
    async with autocommit.get_connection() as session:
        assert await scalar(session, "SELECT 1") == 1


# --- dead connections and outages -----------------------------------------------------------------


async def test_pool_recovers_after_its_backends_are_terminated(
    make_pool: MakePool, admin: asyncpg.Connection
) -> None:
    pool = await make_pool(min_size=3, max_size=3)
    assert await backends(admin, pool) == 3
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        pool.application_name,
    )
    await wait_for_backends(admin, pool, 0)

    async def lease() -> int:
        async with pool.get_connection() as session:
            await asyncio.sleep(0.01)
            return int(await scalar(session, "SELECT 1"))

    assert await asyncio.gather(*(lease() for _ in range(3))) == [1, 1, 1]
    assert await pool.health_check()
    stats = pool.get_stats_snapshot()
    assert stats["connection_errors"] == 0
    assert stats["pool_misses"] == 0
    assert await backends(admin, pool) == 3


async def test_dead_connection_the_driver_has_not_noticed_is_replaced_unseen(
    make_pool: MakePool, admin: asyncpg.Connection
) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    async with pool.get_connection() as session:
        first = await scalar(session, "SELECT pg_backend_pid()")
    # Blind the pool to the driver's closed flag, as after a silent network
    # drop: only a round trip can tell now.
    pool._stock.idle[-1].is_closed = None
    await admin.execute("SELECT pg_terminate_backend($1)", first)
    await wait_for_backends(admin, pool, 0)
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT pg_backend_pid()") != first
    stats = pool.get_stats_snapshot()
    assert stats["connection_errors"] == 0
    assert stats["pool_misses"] == 0


async def test_server_that_refuses_connections_fails_initialize_fast(make_pool: MakePool) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = await make_pool(f"postgresql://postgres@127.0.0.1:{port}/test", initialize=False)
    started = time.monotonic()
    with pytest.raises(DatabaseSetupError, match=r"^Failed to setup pool 'pg'"):
        await pool.initialize()
    assert time.monotonic() - started < 5


async def test_server_that_never_answers_fails_initialize_within_the_timeout(
    make_pool: MakePool, tarpit: int
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{tarpit}/test"
    pool = await make_pool(url, connection_timeout=0.5, initialize=False)
    started = time.monotonic()
    with pytest.raises(DatabaseSetupError, match=r"within 0\.5s"):
        await pool.initialize()
    assert time.monotonic() - started < 5


async def test_connect_that_hangs_during_a_lease_times_out(
    make_pool: MakePool, pg_url: str, tarpit: int
) -> None:
    calls = 0

    async def connect() -> asyncpg.Connection:
        nonlocal calls
        calls += 1
        if calls == 1:
            return await asyncpg.connect(**_connect_kwargs(pg_url))
        return await asyncpg.connect(host="127.0.0.1", port=tarpit, user="postgres", timeout=60)

    pool = await make_pool(min_size=1, max_size=2, connection_timeout=0.5, async_creator=connect)
    async with pool.get_connection():
        started = time.monotonic()
        with pytest.raises(PoolTimeoutError):
            async with pool.get_connection():
                pass
        assert time.monotonic() - started < 5
    stats = pool.get_stats_snapshot()
    assert stats["active_connections"] == 0
    assert pool._gate.in_use == 0


async def test_wrong_user_is_a_typed_error_that_never_shows_the_password(
    make_pool: MakePool, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    parsed = make_url(pg_url).set(username="no_such_role", password="hunter2-secret")
    url = parsed.render_as_string(hide_password=False)
    pool = await make_pool(url, initialize=False)
    with pytest.raises(DatabaseSetupError) as caught:
        await pool.initialize()
    assert "no_such_role" in str(caught.value)
    shown = [str(caught.value), repr(caught.value.__cause__), repr(pool), pool.url, caplog.text]
    shown.append(str(pool.get_stats_snapshot()))
    assert not any("hunter2" in s for s in shown)


# --- sizes and lifetimes --------------------------------------------------------------------------


async def test_burst_of_1000_leases_never_exceeds_max_size_and_close_drops_to_zero(
    make_pool: MakePool, admin: asyncpg.Connection
) -> None:
    pool = await make_pool(min_size=2, max_size=10, connection_timeout=60)
    peak = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, await backends(admin, pool))
            await asyncio.sleep(0.005)

    async def lease(n: int) -> None:
        async with pool.get_connection() as session:
            await session.execute(text("SELECT pg_sleep(:s)"), {"s": 0.001 * (n % 3)})

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(lease(n) for n in range(1000)))
    done.set()
    await sampler
    stats = pool.get_stats_snapshot()
    assert stats["pool_hits"] == 1000
    assert stats["connection_errors"] == 0
    assert stats["peak_active"] == 10
    assert 2 <= peak <= 10
    assert await backends(admin, pool) <= 10
    await pool.close()
    await wait_for_backends(admin, pool, 0)
    assert pool.stats.connection_closures == pool.stats.connection_creations


async def test_50_concurrent_leases_with_a_short_hold(make_pool: MakePool) -> None:
    pool = await make_pool(max_size=10)

    async def lease() -> int:
        async with pool.get_connection() as session:
            await asyncio.sleep(0.01)
            return int(await scalar(session, "SELECT 1"))

    assert sum(await asyncio.gather(*(lease() for _ in range(50)))) == 50
    assert pool.get_stats_snapshot()["pool_exhaustions"] == 0


async def test_idle_connections_above_min_size_are_closed_on_the_server(
    make_pool: MakePool, admin: asyncpg.Connection
) -> None:
    pool = await make_pool(min_size=1, max_size=4, idle_timeout=0.2)
    all_in = asyncio.Barrier(4)

    async def lease() -> None:
        async with pool.get_connection() as session:
            await session.execute(text("SELECT 1"))
            await all_in.wait()

    await asyncio.gather(*(lease() for _ in range(4)))
    assert await backends(admin, pool) == 4
    await wait_for_backends(admin, pool, 1)
    assert pool.get_stats_snapshot()["idle_connections"] == 1


async def test_connection_is_replaced_after_max_lifetime(make_pool: MakePool) -> None:
    pool = await make_pool(min_size=1, max_size=1, max_lifetime=0.3)
    async with pool.get_connection() as session:
        first = await scalar(session, "SELECT pg_backend_pid()")
    await asyncio.sleep(0.5)
    async with pool.get_connection() as session:
        second = await scalar(session, "SELECT pg_backend_pid()")
    assert second != first
    assert pool.get_stats_snapshot()["connection_errors"] == 0


# --- cancellation ---------------------------------------------------------------------------------


async def test_cancelled_query_frees_the_slot_and_leaks_no_connection(
    make_pool: MakePool, admin: asyncpg.Connection
) -> None:
    pool = await make_pool(min_size=1, max_size=2)
    running = asyncio.Event()

    async def slow() -> None:
        async with pool.get_connection() as session:
            running.set()
            await session.execute(text("SELECT pg_sleep(0.5)"))

    task = asyncio.create_task(slow())
    await running.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.stats.active_connections == 0
    assert pool._gate.in_use == 0
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT 1") == 1
    await wait_for_backends(admin, pool, pool.get_stats_snapshot()["idle_connections"])


async def test_lease_cancelled_while_connecting_leaks_nothing(
    make_pool: MakePool, pg_url: str, admin: asyncpg.Connection
) -> None:
    application_name = f"resync-slow-{uuid.uuid4().hex[:8]}"
    connecting = asyncio.Event()

    async def slow_connect() -> asyncpg.Connection:
        connecting.set()
        await asyncio.sleep(0.2)
        return await asyncpg.connect(
            **_connect_kwargs(pg_url), server_settings={"application_name": application_name}
        )

    pool = await make_pool(min_size=1, max_size=2, async_creator=slow_connect)
    connecting.clear()
    async with pool.get_connection():
        task = asyncio.create_task(pool.get_connection().__aenter__())
        await connecting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert pool._gate.in_use == 0
    await asyncio.sleep(0.4)
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
    assert await admin.fetchval(count, application_name) == 1  # the idle one
    await pool.close()
    assert pool.stats.connection_creations == pool.stats.connection_closures


async def test_close_cuts_off_a_lease_that_outlives_the_drain(
    make_pool: MakePool, admin: asyncpg.Connection
) -> None:
    pool = await make_pool(min_size=1, max_size=2)
    leased = asyncio.Event()
    finish = asyncio.Event()

    async def stubborn() -> None:
        async with pool.get_connection() as session:
            await session.execute(text("SELECT 1"))
            leased.set()
            await finish.wait()

    task = asyncio.create_task(stubborn())
    await leased.wait()
    await pool.close(drain_timeout=0.1)
    assert pool.get_stats_snapshot()["leases_abandoned"] == 1
    await wait_for_backends(admin, pool, 0)
    finish.set()
    with pytest.raises(DatabaseError):
        await task
    assert pool.stats.active_connections == 0


async def test_random_cancellations_never_leak_a_connection(
    make_pool: MakePool, admin: asyncpg.Connection
) -> None:
    pool = await make_pool(min_size=2, max_size=4, connection_timeout=30)
    rng = random.Random(7)

    async def lease() -> None:
        async with pool.get_connection() as session:
            await session.execute(text("SELECT pg_sleep(:s)"), {"s": rng.random() * 0.005})

    for _ in range(4):
        tasks = [asyncio.create_task(lease()) for _ in range(50)]
        await asyncio.sleep(rng.random() * 0.03)
        for task in tasks:
            if rng.random() < 0.5:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    stats = pool.get_stats_snapshot()
    assert stats["active_connections"] == 0
    assert pool._gate.in_use == 0
    assert stats["idle_connections"] <= 4
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT 1") == 1
    await wait_for_backends(admin, pool, pool.get_stats_snapshot()["idle_connections"])
    await pool.close()
    await wait_for_backends(admin, pool, 0)
    gc.collect()


@pytest.mark.resync_allow_leaks("pools")  # leaves its pool open on purpose
def test_pool_never_closed_is_cleaned_up_when_its_loop_shuts_down(pg_url: str) -> None:
    async def open_and_forget() -> str:
        config = ConnectionPoolConfig(pool_name="forgotten", min_size=2, max_size=3)
        pool = DatabaseConnectionPool(config, pg_url)
        await pool.initialize()
        async with pool.get_connection() as session:
            await session.execute(text("SELECT 1"))
        return pool.application_name

    with asyncio.Runner() as runner:
        application_name = runner.run(open_and_forget())
    gc.collect()  # nothing is left for the collector to warn about

    async def backends_left() -> int:
        conn = await asyncpg.connect(**_connect_kwargs(pg_url))
        try:
            sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
            deadline = time.monotonic() + 10
            while (count := int(await conn.fetchval(sql, application_name))) and (
                time.monotonic() < deadline
            ):
                await asyncio.sleep(0.05)
            return count
        finally:
            await conn.close()

    assert asyncio.run(backends_left()) == 0


# --- health and options ---------------------------------------------------------------------------


async def test_health_check_runs_select_1_and_records_the_time(make_pool: MakePool) -> None:
    pool = await make_pool()
    assert await pool.health_check() is True
    assert pool.stats.last_health_check is not None
    await pool.close()
    assert await pool.health_check() is False


async def test_engine_options_pass_through_to_asyncpg(make_pool: MakePool) -> None:
    pool = await make_pool(
        echo=False,
        connect_args={"statement_cache_size": 0, "server_settings": {"jit": "off"}},
    )
    async with pool.get_connection() as session:
        raw = (await (await session.connection()).get_raw_connection()).driver_connection
        assert raw._stmt_cache.get_max_size() == 0
        assert await scalar(session, "SHOW jit") == "off"
        assert await scalar(session, "SHOW application_name") == pool.application_name


# --- a server of our own: restart, outage, passwords ----------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL with password authentication."""
    with PgCluster(password="s3cret-pw") as server:
        yield server


@pytest.mark.slow
async def test_restarted_server_costs_the_next_lease_nothing(
    make_pool: MakePool, cluster: PgCluster
) -> None:
    pool = await make_pool(cluster.url(), min_size=2, max_size=3, connection_timeout=3)
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT 1") == 1
    await asyncio.to_thread(cluster.restart)
    await asyncio.sleep(0.1)
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT 1") == 1
    assert await pool.health_check()
    assert pool.get_stats_snapshot()["connection_errors"] == 0


@pytest.mark.slow
async def test_server_that_stays_down_gives_a_typed_error_then_recovers(
    make_pool: MakePool, cluster: PgCluster
) -> None:
    pool = await make_pool(cluster.url(), min_size=1, max_size=2, connection_timeout=2)
    await asyncio.to_thread(cluster.stop)
    try:
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(DatabaseError) as caught:
            async with pool.get_connection():
                pass
        assert time.monotonic() - started < 5
        assert "s3cret" not in str(caught.value)
        assert await pool.health_check() is False
    finally:
        await asyncio.to_thread(cluster.start)
    async with pool.get_connection() as session:
        assert await scalar(session, "SELECT 1") == 1


@pytest.mark.slow
async def test_wrong_password_is_a_typed_error_that_never_shows_it(
    make_pool: MakePool, cluster: PgCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pool = await make_pool(cluster.url(password="wr0ng-pw"), connection_timeout=3, initialize=False)
    started = time.monotonic()
    with pytest.raises(DatabaseSetupError) as caught:
        await pool.initialize()
    assert time.monotonic() - started < 5
    assert "password authentication failed" in str(caught.value)
    shown = [str(caught.value), repr(pool), pool.url, caplog.text, str(pool.get_stats_snapshot())]
    assert not any("wr0ng" in s for s in shown)
    good = await make_pool(cluster.url(), connection_timeout=3)
    assert await good.health_check()
    assert "s3cret" not in repr(good)


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT CAST(:v AS int)",  # asyncpg refuses the argument client-side, quoting it
        "SELECT CAST(CAST(:v AS text) AS int)",  # the server quotes it (SQLSTATE 22P02)
        "SELECT * FROM resync_no_such_table WHERE name = :v",  # 42P01: no value in the text
    ],
)
async def test_a_bound_secret_is_in_no_error_traceback_or_log_line(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture, statement: str
) -> None:
    secret = "user-api-key-XYZ123"
    pool = await make_pool(min_size=1, max_size=1)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(DatabaseError) as caught:
            async with pool.get_connection() as session:
                await session.execute(text(statement), {"v": secret})
        logging.getLogger("test").exception("failed", exc_info=caught.value)
    printed = "".join(traceback.format_exception(caught.value))
    assert "Database operation failed" in printed and "pg" in str(caught.value)
    assert secret not in printed
    assert secret not in repr(caught.value)
    assert all(secret not in record.getMessage() for record in caplog.records)
    assert secret not in caplog.text


async def test_a_commit_the_driver_refused_to_send_is_lost_not_unknown(
    make_pool: MakePool, admin: asyncpg.Connection, table: str
) -> None:
    """Issue 15.8: a backend killed before COMMIT: asyncpg refuses to send it."""
    from resync.core.exceptions import DatabaseCommitUnknownError, DatabaseConnectionLostError

    pool = await make_pool()
    with pytest.raises(DatabaseConnectionLostError) as caught:
        async with pool.get_connection() as session:
            await session.execute(text(f"INSERT INTO {table} VALUES ('never')"))
            pid = await scalar(session, "SELECT pg_backend_pid()")
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            await asyncio.sleep(0.2)  # asyncpg sees the socket close
    assert not isinstance(caught.value, DatabaseCommitUnknownError)
    assert "before COMMIT was sent" in str(caught.value)
    assert await admin.fetchval(f"SELECT count(*) FROM {table}") == 0
    async with pool.get_connection() as session:  # and the pool goes on
        assert await scalar(session, "SELECT 1") == 1


def test_asyncpg_cannot_switch_state_is_a_lost_connection() -> None:
    """Issue 15.8: "cannot switch to state 12" (a killed backend) maps to connection lost.

    Built by hand: a real server cannot be made to put asyncpg's protocol in
    that state on purpose.
    """
    import asyncpg.exceptions
    from sqlalchemy.exc import DBAPIError

    from resync.core.exceptions import DatabaseConnectionLostError

    driver = asyncpg.exceptions.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    )
    adapted = Exception("adapted")
    adapted.__cause__ = driver
    error = DBAPIError("COMMIT", None, adapted)
    config = ConnectionPoolConfig(pool_name="states")
    pool = DatabaseConnectionPool(config, "postgresql+asyncpg://u@127.0.0.1/db")
    mapped = pool._map_error(error)
    assert isinstance(mapped, DatabaseConnectionLostError), mapped
    assert "cannot switch to state" not in str(mapped) or "pool 'states'" in str(mapped)
