"""drain() and resize() of the Redis, HTTP and database pools, under load, on real servers.

What "replaced" means is checked where it can be seen: Redis ``CLIENT LIST``
ids, the connection objects inside httpx, PostgreSQL backends in
``pg_stat_activity``; and in the pool's own ``connection_creations`` /
``connection_closures``. Load runs while the pool drains or resizes and no
lease may fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import text

from resync.core.pools.base_pool import ConnectionPool, ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.pools.redis_pool import RedisConnectionPool
from tests.helpers.upstream import Upstream


def make_config(name: str, **overrides: Any) -> ConnectionPoolConfig:
    values: dict[str, Any] = {
        "pool_name": name,
        "min_size": 3,
        "max_size": 3,
        "connection_timeout": 5.0,
        "idle_timeout": 60.0,
        "max_lifetime": 0.0,
    }
    values.update(overrides)
    return ConnectionPoolConfig(**values)


@contextlib.asynccontextmanager
async def opened(pool: ConnectionPool[Any]) -> AsyncIterator[Any]:
    await pool.initialize()
    try:
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def load(
    pool: ConnectionPool[Any], work: Callable[[Any], Awaitable[object]], workers: int = 5
) -> AsyncIterator[list[BaseException]]:
    """Leases in a loop from ``workers`` tasks until the block ends; yields their errors."""
    errors: list[BaseException] = []
    stop = asyncio.Event()
    done = [0]

    async def loop() -> None:
        while not stop.is_set():
            try:
                async with pool.get_connection() as conn:
                    await work(conn)
                done[0] += 1
            except Exception as exc:
                errors.append(exc)
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(loop()) for _ in range(workers)]
    try:
        yield errors
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert done[0] > 0, "the load never ran"


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


# --- Redis -------------------------------------------------------------------------


@pytest.fixture
def client_name() -> str:
    return f"resync-live-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def redis_ids(admin: aioredis.Redis, name: str) -> set[str]:
    return {str(c["id"]) for c in await admin.client_list() if c.get("name") == name}


@pytest.mark.redis
async def test_redis_drain_replaces_every_connection_under_load_without_a_failed_lease(
    redis_url: str, admin: aioredis.Redis, client_name: str
) -> None:
    pool = RedisConnectionPool(make_config("redis-live"), redis_url, client_name=client_name)
    key = f"resync:live:{client_name}"
    async with opened(pool):
        before = await redis_ids(admin, client_name)
        assert len(before) == 3
        created, closed = pool.stats.connection_creations, pool.stats.connection_closures
        started = time.monotonic()
        async with load(pool, lambda client: client.incr(key)) as errors:
            assert await pool.drain(interval=0.6) == 3
        elapsed = time.monotonic() - started
        assert errors == []
        after = await redis_ids(admin, client_name)
        assert before.isdisjoint(after)
        assert 1 <= len(after) <= 3
        assert pool.stats.connection_closures - closed >= 3
        assert pool.stats.connection_creations - created >= 3
        assert elapsed >= 0.5  # spread over the interval, not all at once
    await admin.delete(key)


@pytest.mark.redis
async def test_redis_drain_of_leased_connections_replaces_them_when_returned(
    redis_url: str, admin: aioredis.Redis, client_name: str
) -> None:
    pool = RedisConnectionPool(
        make_config("redis-live", min_size=2, max_size=2), redis_url, client_name=client_name
    )
    async with opened(pool):
        before = await redis_ids(admin, client_name)
        async with pool.get_connection() as first, pool.get_connection() as second:
            assert await pool.drain(interval=0) == 2
            # Still the same connections while leased: nothing is cut under a lease.
            assert await first.ping() and await second.ping()
            assert await redis_ids(admin, client_name) == before
        async with pool.get_connection() as client:
            await client.ping()
        assert before.isdisjoint(await redis_ids(admin, client_name))


@pytest.mark.redis
async def test_redis_resize_up_admits_waiters_and_down_keeps_leases_working(
    redis_url: str, admin: aioredis.Redis, client_name: str
) -> None:
    pool = RedisConnectionPool(
        make_config("redis-live", min_size=1, max_size=1), redis_url, client_name=client_name
    )
    async with opened(pool):
        release = asyncio.Event()
        held: list[int] = []

        async def hold() -> None:
            async with pool.get_connection() as client:
                await client.ping()
                held.append(1)
                await release.wait()
                await client.ping()  # still usable after the shrink below

        first = asyncio.create_task(hold())
        while not held:
            await asyncio.sleep(0.01)
        waiters = [asyncio.create_task(hold()) for _ in range(2)]
        await asyncio.sleep(0.1)
        assert pool.get_stats_snapshot()["waiting_connections"] == 2
        await pool.resize(1, 3)
        # Growing admitted both waiters while the first lease is still held.
        async with asyncio.timeout(3):
            while len(held) < 3:
                await asyncio.sleep(0.01)
        await pool.resize(1, 1)
        assert pool.get_stats_snapshot()["capacity"] == 1
        release.set()
        await asyncio.gather(first, *waiters)
        assert len(await redis_ids(admin, client_name)) == 1
        assert pool._open_connections() == 1
        await pool.resize(3, 3)  # a larger minimum is opened at once
        assert len(await redis_ids(admin, client_name)) == 3


# --- HTTP --------------------------------------------------------------------------


def http_connections(pool: HTTPConnectionPool) -> list[Any]:
    core = pool._transport.inner._pool  # type: ignore[union-attr]
    return [conn for conn in core.connections if not conn.is_closed()]


async def test_http_drain_replaces_every_connection_under_load_without_a_failed_lease(
    upstream: Upstream,
) -> None:
    pool = HTTPConnectionPool(make_config("http-live"), upstream.url)

    async def request(client: Any) -> None:
        response = await client.get("/slow?seconds=0.02")
        response.raise_for_status()

    async with opened(pool):
        before = {id(conn) for conn in http_connections(pool)}
        assert len(before) == 3
        accepted = upstream.connections
        closed = pool.stats.connection_closures
        async with load(pool, request, workers=3) as errors:
            assert await pool.drain(interval=0.3) == 3
        assert errors == []
        after = {id(conn) for conn in http_connections(pool)}
        assert before.isdisjoint(after)
        assert pool.stats.connection_closures - closed == 3
        # Fresh connections are opened on demand, and the upstream saw each of them.
        assert 1 <= len(after) <= upstream.connections - accepted


async def test_http_drain_waits_for_a_request_in_flight(upstream: Upstream) -> None:
    pool = HTTPConnectionPool(make_config("http-live", min_size=1, max_size=1), upstream.url)
    async with opened(pool):
        (old,) = http_connections(pool)

        async def slow() -> int:
            async with pool.get_connection() as client:
                return (await client.get("/slow?seconds=0.4")).status_code

        request = asyncio.create_task(slow())
        await asyncio.sleep(0.1)
        assert await pool.drain(interval=0) == 1
        assert await request == 200
        assert old.is_closed()


async def test_http_resize_raises_and_lowers_httpx_limits(upstream: Upstream) -> None:
    pool = HTTPConnectionPool(make_config("http-live", min_size=0, max_size=2), upstream.url)

    async def slow() -> None:
        async with pool.get_connection() as client:
            (await client.get("/slow?seconds=0.3")).raise_for_status()

    async with opened(pool):
        await pool.resize(0, 4)
        await asyncio.gather(*(slow() for _ in range(4)))
        # Four requests at once needed four connections: httpx's cap grew too.
        assert len(http_connections(pool)) == 4
        assert pool.get_stats_snapshot()["peak_active"] == 4
        await pool.resize(0, 1)
        assert len(http_connections(pool)) == 1
        await asyncio.gather(*(slow() for _ in range(3)))
        assert len(http_connections(pool)) == 1


# --- database ------------------------------------------------------------------------


async def pg_backends(pool: DatabaseConnectionPool, admin: DatabaseConnectionPool) -> int:
    async with admin.get_connection() as session:
        rows = await session.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": pool.application_name},
        )
        return int(rows.scalar_one())


@pytest.mark.postgres
async def test_database_resize_admits_waiters_and_shrinks_to_the_new_cap(pg_url: str) -> None:
    pool = DatabaseConnectionPool(
        make_config("db-live", min_size=1, max_size=1, idle_timeout=0.3), pg_url
    )
    admin = DatabaseConnectionPool(make_config("db-live-admin", min_size=1, max_size=1), pg_url)
    async with opened(pool), opened(admin):

        async def query() -> None:
            async with pool.get_connection() as session:
                await session.execute(text("SELECT pg_sleep(0.2)"))

        first = asyncio.create_task(query())
        await asyncio.sleep(0.05)
        waiters = [asyncio.create_task(query()) for _ in range(3)]
        await asyncio.sleep(0.05)
        await pool.resize(1, 4)
        # All four at once: with max_size 1 they would take 0.8 s one after another.
        async with asyncio.timeout(5):
            await asyncio.gather(first, *waiters)
        assert pool.get_stats_snapshot()["peak_active"] == 4
        assert await pg_backends(pool, admin) == 4
        await pool.resize(1, 2)
        assert await pg_backends(pool, admin) == 2
        deadline = time.monotonic() + 10
        while await pg_backends(pool, admin) > 1:  # idle above min_size are reaped
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await pool.resize(2, 2)
        assert await pg_backends(pool, admin) == 2


async def test_memory_sqlite_keeps_one_lease_at_a_time_after_resize() -> None:
    pool = DatabaseConnectionPool(
        make_config("sqlite-live", min_size=1, max_size=1), "sqlite+aiosqlite:///:memory:"
    )
    async with opened(pool):
        await pool.resize(1, 5)
        stats = pool.get_stats_snapshot()
        assert (stats["max_size"], stats["capacity"]) == (5, 1)

        async def write(i: int) -> None:
            async with pool.get_connection() as session:
                await session.execute(text("CREATE TABLE IF NOT EXISTS t (i INTEGER)"))
                await session.execute(text("INSERT INTO t VALUES (:i)"), {"i": i})

        await asyncio.gather(*(write(i) for i in range(10)))
        assert pool.get_stats_snapshot()["peak_active"] == 1
