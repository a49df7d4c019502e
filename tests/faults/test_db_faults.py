"""The database pool (asyncpg) against a failing network and server.

Every pool here reaches the shared PostgreSQL through a fault proxy, with
``connection_timeout`` = asyncpg's ``command_timeout`` = ``T``, so the
survival bound ``T * 1.1 + 50 ms`` covers queueing, connecting and each
statement alike. Each scenario injects one fault, holds every lease to the
survival rules (:mod:`tests.faults.survival`), ends the fault, checks
recovery, and finally checks that the server and the proxy hold exactly the
pool's connections -- and none after ``close()``.

The scenarios that do not depend on a commit run for all three lease kinds
(``kind``: the session, Core and driver leases). The driver lease trusts a
connection used in the last 0.5 s without a round trip and is autocommit, so
where the others meet a fault at checkout it may meet it at its first
statement: a black hole or a slow server is then its statement timeout, a
closed connection a retry-safe lost connection -- typed, within the same bound.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from resync.core.exceptions import (
    DatabaseCommitUnknownError,
    DatabaseConnectionLostError,
    DatabaseError,
    DatabasePoolTimeoutError,
    DatabaseStatementTimeoutError,
)
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from tests.faults.conftest import pg_backends, proxied_pg_url, wait_for_pg_backends
from tests.faults.proxy import FaultProxy
from tests.faults.survival import Survival, token

pytestmark = pytest.mark.postgres

T = 1.0
MakePool = Callable[..., Awaitable[DatabaseConnectionPool]]


@pytest.fixture
async def make_pool(pg_url: str, pg_proxy: FaultProxy) -> AsyncIterator[MakePool]:
    """Pools through the proxy; healed and closed after the test."""
    pools: list[DatabaseConnectionPool] = []

    async def make(**config: Any) -> DatabaseConnectionPool:
        values: dict[str, Any] = {
            "pool_name": "faulty-db",
            "min_size": 2,
            "max_size": 4,
            "connection_timeout": T,
            "drain_timeout": 2.0,
        }
        values.update(config)
        pool = DatabaseConnectionPool(
            ConnectionPoolConfig(**values),
            proxied_pg_url(pg_url, pg_proxy),
            connect_args={"command_timeout": T},
        )
        pools.append(pool)
        await pool.initialize()
        return pool

    yield make
    pg_proxy.heal()
    for pool in pools:
        await pool.close()


@pytest.fixture
async def table(pg_admin: asyncpg.Connection) -> AsyncIterator[str]:
    name = f"faults_{uuid.uuid4().hex[:12]}"
    await pg_admin.execute(f"CREATE TABLE {name} (token text PRIMARY KEY)")
    yield name
    await pg_admin.execute(f"DROP TABLE IF EXISTS {name}")


KINDS = ("session", "core", "driver")


def survival_of(pool: DatabaseConnectionPool, kind: str) -> Survival:
    """The survival rules over one lease kind of ``pool``."""
    leases: dict[str, Callable[[], Any]] = {
        "session": pool.get_connection,
        "core": pool.connection,
        "driver": pool.driver_connection,
    }
    return Survival(pool, lease=leases[kind])


async def run(conn: Any, sql: str) -> None:
    """Run ``sql`` on any lease kind's connection."""
    if isinstance(conn, AsyncSession | AsyncConnection):
        await conn.execute(text(sql))
    else:
        await conn.fetch(sql)


async def echo(conn: Any) -> str:
    """Send a token of this lease and check the server's answer carries it."""
    value = token()
    if isinstance(conn, AsyncSession | AsyncConnection):
        got = (await conn.execute(text("SELECT CAST(:v AS text)"), {"v": value})).scalar()
    else:  # the driver's own connection
        got = await conn.fetchval("SELECT $1::text", value)
    assert got == value, f"a reply for another caller: sent {value!r}, got {got!r}"
    return value


def timed_out(kind: str) -> tuple[type[Exception], ...]:
    """What a fault that stops answers looks like to ``kind`` (see the module docs)."""
    if kind == "driver":
        return (DatabasePoolTimeoutError, DatabaseStatementTimeoutError)
    return (DatabasePoolTimeoutError,)


async def assert_nothing_leaked(
    pool: DatabaseConnectionPool, admin: asyncpg.Connection, proxy: FaultProxy
) -> None:
    """Rule 2: no slot held; the server holds exactly the pool's idle connections
    (at most max_size), the proxy one socket pair each; none at all after close."""
    proxy.heal()
    assert pool._gate.in_use == 0
    assert pool.get_stats_snapshot()["active_connections"] == 0
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        idle = len(pool._stock.idle)
        on_server = await pg_backends(admin, pool.application_name)
        if on_server == idle == proxy.server_sockets == proxy.client_sockets:
            break
        assert asyncio.get_running_loop().time() < deadline, (
            f"pool keeps {idle} connections; the server has {on_server}, the proxy "
            f"{proxy.client_sockets} client / {proxy.server_sockets} server sockets"
        )
        await asyncio.sleep(0.05)
    assert idle <= pool.config.max_size
    await pool.close()
    await wait_for_pg_backends(admin, pool.application_name, 0)
    await proxy.wait_for_sockets_async(0)


# --- the server drops connections -------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_backends_killed_by_the_server_cost_no_lease_an_error(
    kind: str, make_pool: MakePool, pg_admin: asyncpg.Connection, pg_proxy: FaultProxy
) -> None:
    pool = await make_pool(min_size=3, max_size=3)
    survival = survival_of(pool, kind)
    await pg_admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        pool.application_name,  # only this pool's own backends
    )
    await wait_for_pg_backends(pg_admin, pool.application_name, 0)
    attempts = await survival.leases(9, echo)
    if kind == "driver":
        # The driver lease trusts a hot connection (the window's documented price): a
        # kill the loop has not read yet may fail its first statement, only as the
        # retry-safe lost connection, and the next leases are served.
        lost = [a for a in attempts if not a.ok]
        assert all(isinstance(a.error, DatabaseConnectionLostError) for a in lost), lost
        assert all(a.ok for a in await survival.leases(9, echo))
    else:
        assert all(a.ok for a in attempts), [str(a.error) for a in attempts]
    await assert_nothing_leaked(pool, pg_admin, pg_proxy)


@pytest.mark.parametrize("kind", KINDS)
async def test_server_restart_fails_leases_typed_then_recovers(
    kind: str, make_pool: MakePool, pg_admin: asyncpg.Connection, pg_proxy: FaultProxy
) -> None:
    pool = await make_pool()
    survival = survival_of(pool, kind)
    assert (await survival.lease(echo)).ok
    # A restart as clients see it: every connection closed, then nobody listening.
    pg_proxy.close_all()
    pg_proxy.refuse_new()
    attempts = await survival.leases(4, echo)
    assert all(isinstance(a.error, DatabaseError) for a in attempts), attempts
    pg_proxy.heal()
    await survival.recovers(echo)
    assert all(a.ok for a in await survival.leases(8, echo))
    await assert_nothing_leaked(pool, pg_admin, pg_proxy)


@pytest.mark.parametrize("kind", KINDS)
async def test_reply_cut_mid_way_is_a_typed_error(
    kind: str, make_pool: MakePool, pg_admin: asyncpg.Connection, pg_proxy: FaultProxy
) -> None:
    pool = await make_pool()
    survival = survival_of(pool, kind)

    async def big_result(conn: Any) -> None:
        pg_proxy.cut_after(2000, "to_client")
        await run(conn, "SELECT repeat('x', 100) FROM generate_series(1, 1000)")

    attempt = await survival.lease(big_result)
    assert isinstance(attempt.error, DatabaseError)
    pg_proxy.heal()
    await survival.recovers(echo)
    await assert_nothing_leaked(pool, pg_admin, pg_proxy)


# --- a network that stops answering ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_blackhole_during_acquire_times_out_typed(
    kind: str, make_pool: MakePool, pg_admin: asyncpg.Connection, pg_proxy: FaultProxy
) -> None:
    pool = await make_pool()
    survival = survival_of(pool, kind)
    pg_proxy.blackhole()
    # More callers than connections: some validate an idle one, some connect.
    attempts = await survival.leases(6, echo)
    assert all(isinstance(a.error, timed_out(kind)) for a in attempts), attempts
    pg_proxy.heal()
    await survival.recovers(echo)
    await assert_nothing_leaked(pool, pg_admin, pg_proxy)


@pytest.mark.parametrize("kind", KINDS)
async def test_blackhole_during_a_query_raises_statement_timeout(
    kind: str, make_pool: MakePool, pg_admin: asyncpg.Connection, pg_proxy: FaultProxy
) -> None:
    pool = await make_pool()
    survival = survival_of(pool, kind)

    async def query_into_the_void(conn: Any) -> None:
        await echo(conn)
        pg_proxy.blackhole()
        await echo(conn)

    attempt = await survival.lease(query_into_the_void)
    assert isinstance(attempt.error, DatabaseStatementTimeoutError)
    assert isinstance(attempt.error, TimeoutError)
    pg_proxy.heal()
    await survival.recovers(echo)
    await assert_nothing_leaked(pool, pg_admin, pg_proxy)


async def test_blackhole_during_commit_reports_the_outcome_unknown(
    make_pool: MakePool, pg_admin: asyncpg.Connection, pg_proxy: FaultProxy, table: str
) -> None:
    pool = await make_pool()
    survival = Survival(pool)
    written = token()

    async def insert_then_partition(session: AsyncSession) -> None:
        await session.execute(text(f"INSERT INTO {table} VALUES (:t)"), {"t": written})
        pg_proxy.blackhole()  # the COMMIT of this lease goes nowhere

    attempt = await survival.lease(insert_then_partition)
    assert isinstance(attempt.error, DatabaseCommitUnknownError)
    assert "may or may not have been committed" in str(attempt.error)
    pg_proxy.heal()
    await survival.recovers(echo)
    # Either outcome is legitimate -- that is what "unknown" means -- but the
    # row is there once or not at all.
    assert await pg_admin.fetchval(f"SELECT count(*) FROM {table}") in (0, 1)
    await assert_nothing_leaked(pool, pg_admin, pg_proxy)


async def test_commit_refused_by_the_server_is_not_reported_unknown(
    make_pool: MakePool, pg_admin: asyncpg.Connection, pg_proxy: FaultProxy, table: str
) -> None:
    await pg_admin.execute(
        f"CREATE TABLE {table}_deferred (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)"
    )
    pool = await make_pool()
    survival = Survival(pool)

    async def violate_at_commit(session: AsyncSession) -> None:
        await session.execute(text(f"INSERT INTO {table}_deferred VALUES (1), (1)"))

    try:
        attempt = await survival.lease(violate_at_commit)
        assert isinstance(attempt.error, DatabaseError)
        assert not isinstance(attempt.error, DatabaseCommitUnknownError)
        assert "commit failed and was rolled back" in str(attempt.error)
        assert await pg_admin.fetchval(f"SELECT count(*) FROM {table}_deferred") == 0
    finally:
        await pg_admin.execute(f"DROP TABLE {table}_deferred")
    await assert_nothing_leaked(pool, pg_admin, pg_proxy)


@pytest.mark.parametrize("kind", KINDS)
async def test_connect_that_never_answers_times_out_typed(
    kind: str, make_pool: MakePool, pg_admin: asyncpg.Connection, pg_proxy: FaultProxy
) -> None:
    pool = await make_pool(min_size=1, max_size=2)
    survival = survival_of(pool, kind)
    pg_proxy.close_all()  # the pooled connections die, so leases must connect
    pg_proxy.hang_new()
    attempts = await survival.leases(3, echo)
    # A driver lease may be handed a hot connection the proxy closed a moment ago.
    expected = (*timed_out(kind), DatabaseConnectionLostError)
    assert all(isinstance(a.error, expected) for a in attempts), attempts
    pg_proxy.heal()
    await survival.recovers(echo)
    await assert_nothing_leaked(pool, pg_admin, pg_proxy)


@pytest.mark.parametrize("kind", KINDS)
async def test_slow_server_times_out_typed_and_a_merely_slow_one_serves(
    kind: str, make_pool: MakePool, pg_admin: asyncpg.Connection, pg_proxy: FaultProxy
) -> None:
    pool = await make_pool()
    survival = survival_of(pool, kind)
    pg_proxy.set_latency(to_client=T * 1.5)
    attempts = await survival.leases(2, echo)
    assert all(isinstance(a.error, timed_out(kind)) for a in attempts), attempts
    pg_proxy.set_latency(to_server=0.05, to_client=0.05)
    await survival.recovers(echo)
    assert all(a.ok for a in await survival.leases(4, echo))
    await assert_nothing_leaked(pool, pg_admin, pg_proxy)


# --- chaos -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
async def test_resets_under_concurrent_load_never_cross_replies(
    kind: str, make_pool: MakePool, pg_admin: asyncpg.Connection, pg_proxy: FaultProxy
) -> None:
    pool = await make_pool(min_size=2, max_size=4)
    survival = survival_of(pool, kind)
    rng = random.Random(7)
    stop = asyncio.Event()

    async def chaos() -> None:
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.05, 0.25))
            pg_proxy.reset_all()

    async def worker() -> tuple[int, int]:
        ok = failed = 0
        while not stop.is_set():
            attempt = await survival.lease(echo)
            ok, failed = ok + attempt.ok, failed + (not attempt.ok)
            if not attempt.ok:
                await asyncio.sleep(0.01)  # back off, as a real client would
        return ok, failed

    injector = asyncio.create_task(chaos())
    workers = [asyncio.create_task(worker()) for _ in range(8)]
    await asyncio.sleep(3)
    stop.set()
    results = await asyncio.gather(*workers)
    await injector
    assert sum(ok for ok, _ in results) > 50  # it kept serving through the resets
    pg_proxy.heal()
    await survival.recovers(echo)
    await assert_nothing_leaked(pool, pg_admin, pg_proxy)
