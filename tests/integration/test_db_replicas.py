"""Read replicas and failover against a real PostgreSQL streaming replica.

The module starts one throwaway primary cluster and one hot standby cloned
from it with ``pg_basebackup -R`` (:mod:`tests.helpers.pg_replica`), both on
free loopback ports and shared by the tests here; a test that stops the
standby starts it again. The failover test, which promotes a standby for
good, builds its own pair. Which server answered is read from the server
itself: ``pg_is_in_recovery()`` is true only on the standby.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from resync.api import DBReadSession, DBSession, create_app
from resync.core.exceptions import DatabaseError, DatabasePoolClosedError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.settings import Settings
from tests.faults.proxy import FaultProxy
from tests.helpers.net import free_port
from tests.helpers.pg_cluster import PgCluster
from tests.helpers.pg_replica import PgStandby

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SECRET = "Replica-Pw-9913"  # in URLs only: the clusters trust loopback and never ask for it
IN_RECOVERY = text("SELECT pg_is_in_recovery()")
MakePool = Callable[..., Awaitable[DatabaseConnectionPool]]


async def _sql(port: int, *statements: str) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def primary() -> Iterator[PgCluster]:
    with PgCluster() as cluster:
        asyncio.run(_sql(cluster.port, "CREATE TABLE items (n int)"))
        yield cluster


@pytest.fixture(scope="module")
def standby(primary: PgCluster) -> Iterator[PgStandby]:
    with PgStandby(primary) as replica:
        yield replica


@pytest.fixture
async def make_pool(primary: PgCluster) -> AsyncIterator[MakePool]:
    """Build and open pools on the primary; every one is closed after the test."""
    pools: list[DatabaseConnectionPool] = []

    async def make(replica_urls: Any, **options: Any) -> DatabaseConnectionPool:
        config = ConnectionPoolConfig(
            pool_name="database", min_size=1, max_size=4, connection_timeout=5.0
        )
        options.setdefault("replica_check_interval", 0.2)
        pool = DatabaseConnectionPool(config, primary.url(), replica_urls=replica_urls, **options)
        pools.append(pool)
        await pool.initialize()
        return pool

    yield make
    for pool in pools:
        await pool.close()


def replica_url(cluster: PgCluster) -> str:
    return cluster.url(password=SECRET)


async def in_recovery(session: AsyncSession) -> bool:
    return bool(await session.scalar(IN_RECOVERY))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def replica_details(pool: DatabaseConnectionPool) -> list[dict[str, Any]]:
    return list(pool.get_stats_snapshot()["details"]["replicas"])


# --- routing ---------------------------------------------------------------------------


async def test_reads_go_to_the_replica_and_writes_to_the_primary(
    make_pool: MakePool, standby: PgStandby
) -> None:
    pool = await make_pool(replica_url(standby))
    marker = int(time.time() * 1000) % 1_000_000_000
    async with pool.get_connection() as session:
        assert not await in_recovery(session)
        await session.execute(text("INSERT INTO items VALUES (:n)"), {"n": marker})

    async def replicated() -> bool:
        async with pool.get_read_session() as session:
            assert await in_recovery(session)
            found = await session.scalar(
                text("SELECT count(*) FROM items WHERE n = :n"), {"n": marker}
            )
            return bool(found)

    await eventually(replicated)  # streamed from the primary to the standby
    [replica] = replica_details(pool)
    assert replica["state"] == "healthy"
    assert replica["reads"] >= 1
    assert replica["name"] == "database-replica-1"
    assert SECRET not in str(pool.get_stats_snapshot())
    assert pool.get_stats_snapshot()["details"]["read_fallbacks"] == 0


async def test_a_write_in_a_read_session_is_refused_by_the_replica_and_retires_nothing(
    make_pool: MakePool, standby: PgStandby
) -> None:
    pool = await make_pool(replica_url(standby))
    with pytest.raises(DatabaseError, match="read-only transaction"):
        async with pool.get_read_session() as session:
            await session.execute(text("INSERT INTO items VALUES (1)"))
    [replica_pool] = pool.replicas
    for each in (pool, replica_pool):
        details = each.get_stats_snapshot()["details"]
        assert details["replacements"] == 0  # a misplaced write is no failover
    async with pool.get_read_session() as session:  # the replica still serves reads
        assert await in_recovery(session)


async def test_reads_take_turns_and_avoid_the_busier_replica(
    make_pool: MakePool, standby: PgStandby
) -> None:
    # Two replica URLs for the one standby: two pools the router chooses between.
    pool = await make_pool([replica_url(standby), replica_url(standby)])
    async with pool.get_read_session():
        first = [r["reads"] for r in replica_details(pool)]
        async with pool.get_read_session():
            second = [r["reads"] for r in replica_details(pool)]
    assert sorted(first) == [0, 1]
    assert second == [1, 1]  # the idle replica got the second read, not the busy one
    for _ in range(10):
        async with pool.get_read_session() as session:
            assert await in_recovery(session)
    assert [r["reads"] for r in replica_details(pool)] == [6, 6]


async def test_drain_replaces_the_replica_connections_too(
    make_pool: MakePool, standby: PgStandby
) -> None:
    # No background check during the test: it would hold the replica's connection.
    pool = await make_pool(replica_url(standby), replica_check_interval=30.0)
    [replica_pool] = pool.replicas
    async with pool.get_read_session() as session:
        old_pid = await session.scalar(text("SELECT pg_backend_pid()"))
    assert await pool.drain(0.05) == 2  # one primary connection, one replica connection
    assert replica_pool.get_stats_snapshot()["details"]["generation"] == 1
    async with pool.get_read_session() as session:
        assert await in_recovery(session)
        assert await session.scalar(text("SELECT pg_backend_pid()")) != old_pid


async def test_a_closed_pool_refuses_read_sessions_and_closes_its_replicas(
    make_pool: MakePool, standby: PgStandby
) -> None:
    pool = await make_pool(replica_url(standby))
    await pool.close()
    with pytest.raises(DatabasePoolClosedError):
        async with pool.get_read_session():
            pass
    assert [replica.state.value for replica in pool.replicas] == ["closed"]


# --- failing over ----------------------------------------------------------------------


async def test_replica_outage_sends_reads_to_the_primary_until_it_is_healthy_again(
    make_pool: MakePool, standby: PgStandby
) -> None:
    pool = await make_pool(replica_url(standby))
    async with pool.get_read_session() as session:
        assert await in_recovery(session)
    standby.stop()
    try:
        answered_by_replica = []
        for _ in range(5):  # not one read fails: they go to the primary
            async with pool.get_read_session() as session:
                answered_by_replica.append(await in_recovery(session))
        assert answered_by_replica == [False] * 5
        [replica] = replica_details(pool)
        assert replica["state"] == "down"
        assert replica["last_error"]
        assert SECRET not in replica["last_error"]
        assert pool.get_stats_snapshot()["details"]["read_fallbacks"] == 5
    finally:
        standby.start()

    async def back() -> bool:
        return bool(replica_details(pool)[0]["state"] == "healthy")

    await eventually(back)  # the background check put it back
    async with pool.get_read_session() as session:
        assert await in_recovery(session)
    assert replica_details(pool)[0]["taken_out"] == 1


async def test_a_replica_down_at_start_leaves_the_pool_up_and_reads_on_the_primary(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="resync")
    nowhere = f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1:{free_port()}/postgres"
    pool = await make_pool(nowhere, replica_check_interval=30.0)
    [replica] = replica_details(pool)
    assert replica["state"] == "down"
    assert "cannot connect" in replica["last_error"]
    async with pool.get_read_session() as session:
        assert not await in_recovery(session)
    async with pool.get_connection() as session:
        assert not await in_recovery(session)
    assert "database-replica-1' taken out of the read rotation" in caplog.text
    assert SECRET not in caplog.text + str(pool.get_stats_snapshot()) + repr(pool.replicas)


async def test_failover_promoted_replica_takes_writes_after_the_old_primary_turns_read_only() -> (
    None
):
    """A real failover: the standby is promoted, the old primary stays reachable
    but read-only (as a demoted primary), and the address the pool uses for
    the primary (a proxy, standing in for a VIP or DNS name) moves to the new
    one. The first write on an old connection gets SQLSTATE 25006; the pool
    then replaces every connection, and the writes after it land on the new
    primary."""
    with (
        PgCluster() as old,
        PgStandby(old) as new,
        FaultProxy(("127.0.0.1", old.port)) as address,
    ):
        await _sql(old.port, "CREATE TABLE items (n int)")
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{address.port}/postgres"
        config = ConnectionPoolConfig(
            pool_name="database", min_size=2, max_size=4, connection_timeout=5.0
        )
        async with DatabaseConnectionPool(
            config, url, replica_urls=new.url(), replica_check_interval=0.2
        ) as pool:
            async with pool.get_connection() as session:
                await session.execute(text("INSERT INTO items VALUES (1)"))

            async def caught_up() -> bool:
                try:
                    async with pool.get_read_session() as session:
                        return bool(await session.scalar(text("SELECT count(*) FROM items")))
                except DatabaseError:  # not even the table has been replayed yet
                    return False

            await eventually(caught_up)  # fail over only once the standby has the row
            new.promote()
            await _sql(
                old.port,
                "ALTER SYSTEM SET default_transaction_read_only = on",
                "SELECT pg_reload_conf()",
            )
            address.set_target("127.0.0.1", new.port)

            async def old_connections_read_only() -> bool:
                # A backend applies a reloaded setting between two commands:
                # once both pooled connections report it, every next
                # transaction on them is read-only.
                both = asyncio.Barrier(2)

                async def check() -> bool:
                    async with pool.get_connection() as session:
                        value = await session.scalar(text("SHOW default_transaction_read_only"))
                        await both.wait()  # hold both connections at once
                        return value == "on"

                return all(await asyncio.gather(check(), check()))

            await eventually(old_connections_read_only)

            outcomes: list[str] = []
            for n in range(2, 8):
                try:
                    async with pool.get_connection() as session:
                        await session.execute(text("INSERT INTO items VALUES (:n)"), {"n": n})
                    outcomes.append("ok")
                except DatabaseError as exc:
                    assert "read-only transaction" in str(exc)
                    outcomes.append("read-only")
            assert outcomes[0] == "read-only"  # an old connection, on the old primary
            assert outcomes[1:] == ["ok"] * 5
            details = pool.get_stats_snapshot()["details"]
            assert details["read_only_errors"] == 1
            assert details["replacements"] == 1
            async with pool.get_connection() as session:
                assert not await in_recovery(session)
                rows = await session.scalar(text("SELECT count(*) FROM items"))
            assert rows == 6  # the first row (replicated) and the five after the failover


# --- the service -------------------------------------------------------------------------

read_router = APIRouter()


@read_router.get("/test/read")
async def read_endpoint(session: DBReadSession) -> dict[str, bool]:
    return {"replica": await in_recovery(session)}


@read_router.get("/test/write")
async def write_endpoint(session: DBSession) -> dict[str, bool]:
    return {"replica": await in_recovery(session)}


async def test_read_dependency_uses_the_replica_and_pools_shows_it_masked(
    primary: PgCluster, standby: PgStandby
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        DATABASE_URL=primary.url(password=SECRET),
        DATABASE_REPLICA_URLS=f"{replica_url(standby)},",
        DB_POOL_MIN_SIZE=1,
        DB_POOL_MAX_SIZE=2,
    )
    app = create_app(settings)
    app.include_router(read_router)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://resync") as client:
            assert (await client.get("/test/read")).json() == {"replica": True}
            assert (await client.get("/test/write")).json() == {"replica": False}
            response = await client.get("/pools")
            assert SECRET not in response.text
            [replica] = response.json()["pools"]["database"]["details"]["replicas"]
            assert replica["state"] == "healthy"
            assert replica["reads"] == 1
            assert replica["target"].startswith("postgresql+asyncpg://postgres:***@127.0.0.1:")
