"""Shutting down under load: a pool closed while callers wait, a pool closed
under a lease stuck on a dead network, a manager shut down while leases are out.

Every backend reaches its server through a fault proxy (the shared PostgreSQL
and Redis, a local HTTP upstream), so the proxy's socket counts prove that
nothing is left open after the close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from resync.core.exceptions import PoolClosedError, ResyncError
from resync.core.pools.base_pool import ConnectionPool, ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.pools.pool_manager import ConnectionPoolManager
from resync.core.pools.redis_pool import RedisConnectionPool
from resync.settings import Settings
from tests.faults.conftest import proxied_pg_url, wait_for_pg_backends
from tests.faults.proxy import FaultProxy
from tests.faults.survival import Survival, token
from tests.helpers.upstream import Upstream

T = 1.0


@dataclass
class Target:
    """One backend behind its proxy: how to build a pool on it and talk through a lease."""

    backend: str
    proxy: FaultProxy
    url: str

    def pool(self, **config: Any) -> ConnectionPool[Any]:
        values: dict[str, Any] = {
            "pool_name": f"closing-{self.backend}",
            "min_size": 1,
            "max_size": 2,
            "connection_timeout": T,
            "drain_timeout": 3.0,
        }
        values.update(config)
        cfg = ConnectionPoolConfig(**values)
        if self.backend == "database":
            return DatabaseConnectionPool(cfg, self.url, connect_args={"command_timeout": T})
        if self.backend == "redis":
            return RedisConnectionPool(cfg, self.url)
        return HTTPConnectionPool(cfg, self.url, health_path="/ok", circuit_breaker=False)


async def echo(connection: Any) -> str:
    """One round trip carrying a token of this caller, checked on the way back."""
    value = token()
    if isinstance(connection, AsyncSession):
        result = await connection.execute(text("SELECT CAST(:v AS text)"), {"v": value})
        got: object = result.scalar()
    elif isinstance(connection, Redis):
        got = await connection.echo(value)
    else:
        assert isinstance(connection, httpx.AsyncClient)
        response = await connection.post("/echo", content=value)
        response.raise_for_status()
        got = response.text.removeprefix("POST ")
    assert got == value, f"a reply for another caller: sent {value!r}, got {got!r}"
    return value


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as running:
        yield running


@pytest.fixture
def targets(pg_url: str, redis_url: str, upstream: Upstream) -> Iterator[dict[str, Target]]:
    pg = make_url(pg_url)
    redis = make_url(redis_url)
    with (
        FaultProxy((pg.host or "127.0.0.1", pg.port or 5432)) as pg_proxy,
        FaultProxy((redis.host or "127.0.0.1", redis.port or 6379)) as redis_proxy,
        FaultProxy(("127.0.0.1", upstream.port)) as http_proxy,
    ):
        yield {
            "database": Target("database", pg_proxy, proxied_pg_url(pg_url, pg_proxy)),
            "redis": Target(
                "redis",
                redis_proxy,
                f"redis://{redis_proxy.host}:{redis_proxy.port}/{redis.database or 0}",
            ),
            "http": Target("http", http_proxy, f"http://{http_proxy.host}:{http_proxy.port}"),
        }


async def wait_until(condition: Any, what: str, timeout: float = 5.0) -> None:
    deadline = perf_counter() + timeout
    while not condition():
        assert perf_counter() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("backend", ["database", "redis", "http"])
async def test_pool_closed_while_callers_wait_refuses_them_at_once_and_drains_holders(
    backend: str, targets: dict[str, Target]
) -> None:
    target = targets[backend]
    pool = target.pool()
    await pool.initialize()
    survival = Survival(pool)
    release = asyncio.Event()

    async def holder() -> None:
        async with pool.get_connection() as connection:
            await echo(connection)
            await release.wait()
            await echo(connection)  # still served: close() drains, it does not cut

    holders = [asyncio.create_task(holder()) for _ in range(2)]
    await wait_until(lambda: pool.stats.active_connections == 2, "two holders")
    waiters = [asyncio.create_task(survival.lease(echo)) for _ in range(5)]
    await wait_until(lambda: pool._gate.waiting == 5, "five waiters")
    closing = asyncio.create_task(pool.close())
    refused = await asyncio.gather(*waiters)
    assert all(isinstance(a.error, PoolClosedError) for a in refused), refused
    assert all(a.elapsed < 0.5 for a in refused)  # refused at once, not at their timeout
    late = await survival.lease(echo)
    assert isinstance(late.error, PoolClosedError)
    assert not closing.done()  # still draining the holders
    release.set()
    await asyncio.gather(*holders)
    await closing
    assert pool.leases_abandoned == 0
    await target.proxy.wait_for_sockets_async(0)


@pytest.mark.parametrize("backend", ["database", "redis", "http"])
async def test_close_cuts_off_a_lease_stuck_on_a_dead_network(
    backend: str, targets: dict[str, Target]
) -> None:
    target = targets[backend]
    pool = target.pool(drain_timeout=0.3)
    await pool.initialize()
    stuck_in = asyncio.Event()
    outcome: list[BaseException | None] = []

    async def stuck() -> None:
        try:
            async with pool.get_connection() as connection:
                await echo(connection)
                target.proxy.blackhole()
                stuck_in.set()
                await echo(connection)
        except BaseException as exc:
            outcome.append(exc)
            raise
        outcome.append(None)

    task = asyncio.create_task(stuck())
    await stuck_in.wait()
    started = perf_counter()
    await pool.close()
    closed_in = perf_counter() - started
    # The drain deadline, then closing the idle connections into the silence
    # (each bounded by connection_timeout).
    assert closed_in <= 0.3 + T * 1.1 + 0.05
    assert pool.leases_abandoned == 1
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), T)
    assert isinstance(outcome[0], ResyncError), outcome
    target.proxy.heal()
    await target.proxy.wait_for_sockets_async(0)


async def test_manager_shutdown_drains_active_leases_and_refuses_new_ones(
    targets: dict[str, Target], pg_admin: asyncpg.Connection
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        DATABASE_URL=targets["database"].url,
        DB_POOL_MIN_SIZE=1,
        DB_POOL_MAX_SIZE=3,
        DB_POOL_CONNECT_TIMEOUT=T,
        REDIS_URL=targets["redis"].url,
        REDIS_POOL_MAX_SIZE=3,
        REDIS_POOL_CONNECT_TIMEOUT=T,
        TWS_BASE_URL=targets["http"].url,
        HTTP_POOL_MAX_SIZE=3,
        HTTP_POOL_CONNECT_TIMEOUT=T,
        POOL_DRAIN_TIMEOUT=5.0,
    )
    manager = ConnectionPoolManager(settings, check_budget_on_start=False)
    await manager.initialize()
    pools = dict(manager.pools)
    assert set(pools) == {"database", "redis", "tws_http"}
    db_pool = pools["database"]
    assert isinstance(db_pool, DatabaseConnectionPool)
    release = asyncio.Event()
    served: list[str] = []

    async def busy(pool: ConnectionPool[Any]) -> None:
        async with pool.get_connection() as connection:
            await echo(connection)
            await release.wait()
            served.append(await echo(connection))

    leases = [asyncio.create_task(busy(p)) for p in pools.values() for _ in range(2)]
    await wait_until(
        lambda: all(p.stats.active_connections == 2 for p in pools.values()), "active leases"
    )
    closing = asyncio.create_task(manager.close_all())
    await wait_until(lambda: all(p._shutdown for p in pools.values()), "pools closing")
    for pool in pools.values():
        attempt = await Survival(pool).lease(echo)
        assert isinstance(attempt.error, PoolClosedError), attempt
    assert not closing.done()
    release.set()
    await asyncio.gather(*leases)
    assert len(served) == 6  # every active lease finished its work
    assert await closing == {"database": 0, "redis": 0, "tws_http": 0}
    await wait_for_pg_backends(pg_admin, db_pool.application_name, 0)
    for target in targets.values():
        await target.proxy.wait_for_sockets_async(0)


@pytest.mark.parametrize("backend", ["database", "redis", "http"])
async def test_close_returns_within_the_drain_timeout_plus_one_second(
    backend: str, targets: dict[str, Target]
) -> None:
    """Issue 15.5: drain 1 s, connect timeout 2 s, a lease stuck on a dead network.

    Before: the drain, then closing the idle connections into the silence,
    each bounded by the connect timeout (3 s and more). After the drain
    timeout every socket still open is aborted: close() takes at most 2 s.
    """
    target = targets[backend]
    pool = target.pool(min_size=2, connection_timeout=2.0, drain_timeout=1.0)
    await pool.initialize()
    stuck_in = asyncio.Event()

    async def stuck() -> None:
        async with pool.get_connection() as connection:
            await echo(connection)
            target.proxy.blackhole()
            stuck_in.set()
            await echo(connection)

    task = asyncio.create_task(stuck())
    await stuck_in.wait()
    started = perf_counter()
    await pool.close()
    closed_in = perf_counter() - started
    assert closed_in <= 1.0 + 1.0, f"close() took {closed_in:.2f}s"
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 3)
    target.proxy.heal()
    await target.proxy.wait_for_sockets_async(0)
