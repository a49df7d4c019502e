"""The Redis pool against a failing network and a restarting server.

Each test owns a throwaway ``redis-server`` (it is stopped and started again)
and reaches it through a fault proxy; ``connection_timeout`` (which is also
redis-py's socket timeout) is ``T``. The pool's connections carry a client
name of their own, so the server's ``CLIENT LIST`` shows exactly them. A short
``idle_timeout`` runs the pool's maintenance every quarter second, so it is
at work during the faults too.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from resync.core.exceptions import RedisPoolError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.redis_pool import RedisConnectionPool
from tests.faults.proxy import FaultProxy
from tests.faults.survival import Survival, token
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.redis

T = 1.0
MakePool = Callable[..., Awaitable[RedisConnectionPool]]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as running:
        yield running


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", server.port)) as running:
        yield running


@pytest.fixture
async def watcher(server: RedisServer) -> AsyncIterator[Redis]:
    """A client straight to the server (not through the proxy), for CLIENT LIST."""
    client = Redis.from_url(server.url(), decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def client_name() -> str:
    return f"resync-fault-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def make_pool(proxy: FaultProxy, client_name: str) -> AsyncIterator[MakePool]:
    pools: list[RedisConnectionPool] = []

    async def make(**config: Any) -> RedisConnectionPool:
        values: dict[str, Any] = {
            "pool_name": "faulty-redis",
            "min_size": 2,
            "max_size": 4,
            "connection_timeout": T,
            "drain_timeout": 2.0,
            "idle_timeout": 1.0,
        }
        values.update(config)
        pool = RedisConnectionPool(
            ConnectionPoolConfig(**values),
            f"redis://{proxy.host}:{proxy.port}/0",
            client_name=client_name,
        )
        pools.append(pool)
        await pool.initialize()
        return pool

    yield make
    proxy.heal()
    for pool in pools:
        await pool.close()


async def echo(client: Redis) -> str:
    """ECHO a token of this lease; the answer must be that token."""
    value = token()
    got = await client.echo(value)
    assert got == value, f"a reply for another caller: sent {value!r}, got {got!r}"
    return value


async def server_connections(watcher: Redis, name: str) -> int:
    return sum(1 for c in await watcher.client_list() if c.get("name") == name)


async def assert_nothing_leaked(
    pool: RedisConnectionPool, watcher: Redis, proxy: FaultProxy, name: str
) -> None:
    """Rule 2: no slot held; the server sees exactly the pool's open connections
    (at most max_size); after close, none -- on the server and at the proxy."""
    proxy.heal()
    assert pool._gate.in_use == 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while (on_server := await server_connections(watcher, name)) != pool._open_connections():
        assert loop.time() < deadline, (
            f"pool has {pool._open_connections()} open, the server {on_server}"
        )
        await asyncio.sleep(0.05)
    assert on_server <= pool.config.max_size
    await pool.close()
    while (on_server := await server_connections(watcher, name)) != 0:
        assert loop.time() < deadline, f"{on_server} connections left on the server"
        await asyncio.sleep(0.05)
    await proxy.wait_for_sockets_async(0)


async def test_redis_restart_fails_leases_typed_then_recovers(
    make_pool: MakePool,
    server: RedisServer,
    proxy: FaultProxy,
    watcher: Redis,
    client_name: str,
) -> None:
    pool = await make_pool()
    survival = Survival(pool)
    assert (await survival.lease(echo)).ok
    await asyncio.to_thread(server.stop)
    attempts = await survival.leases(3, echo)
    assert all(isinstance(a.error, RedisPoolError) for a in attempts), attempts
    await asyncio.to_thread(server.start)
    await survival.recovers(echo)
    assert all(a.ok for a in await survival.leases(8, echo))
    await assert_nothing_leaked(pool, watcher, proxy, client_name)


async def test_connections_reset_under_the_pool_are_replaced_unseen(
    make_pool: MakePool, proxy: FaultProxy, watcher: Redis, client_name: str
) -> None:
    pool = await make_pool(min_size=4)
    survival = Survival(pool)
    assert proxy.reset_all() == 4
    attempts = await survival.leases(8, echo)
    assert all(a.ok for a in attempts), [str(a.error) for a in attempts]
    await assert_nothing_leaked(pool, watcher, proxy, client_name)


async def test_connections_lost_while_idle_are_reopened_and_counted_honestly(
    make_pool: MakePool, proxy: FaultProxy, watcher: Redis, client_name: str
) -> None:
    pool = await make_pool(min_size=3, max_size=3)
    survival = Survival(pool)
    assert proxy.reset_all() == 3
    # The next lease gets a reopened connection, not a failed command and a retry.
    assert (await survival.lease(echo)).ok
    assert pool.get_stats_snapshot()["connection_errors"] == 0
    # Maintenance closes the other dead ones and reopens up to min_size.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while await server_connections(watcher, client_name) != 3 or proxy.client_sockets != 3:
        assert loop.time() < deadline, repr(pool)
        await asyncio.sleep(0.05)
    assert pool.get_stats_snapshot()["idle_connections"] == 3
    await assert_nothing_leaked(pool, watcher, proxy, client_name)


async def test_blackhole_during_acquire_and_command_times_out_typed(
    make_pool: MakePool, proxy: FaultProxy, watcher: Redis, client_name: str
) -> None:
    pool = await make_pool(min_size=1, max_size=3)
    survival = Survival(pool)
    proxy.blackhole()
    # One caller gets the open connection and waits on its command; the
    # others must connect first, into the partition.
    attempts = await survival.leases(3, echo)
    assert all(isinstance(a.error, RedisPoolError) for a in attempts), attempts
    proxy.heal()
    await survival.recovers(echo)
    await assert_nothing_leaked(pool, watcher, proxy, client_name)


async def test_slow_server_times_out_typed_and_a_merely_slow_one_serves(
    make_pool: MakePool, proxy: FaultProxy, watcher: Redis, client_name: str
) -> None:
    pool = await make_pool()
    survival = Survival(pool)
    proxy.set_latency(to_client=T * 1.5)
    attempts = await survival.leases(2, echo)
    assert all(isinstance(a.error, RedisPoolError) for a in attempts), attempts
    proxy.set_latency(to_server=0.05, to_client=0.05)
    await survival.recovers(echo)
    assert all(a.ok for a in await survival.leases(4, echo))
    await assert_nothing_leaked(pool, watcher, proxy, client_name)


async def test_connect_that_never_answers_times_out_typed(
    make_pool: MakePool, proxy: FaultProxy, watcher: Redis, client_name: str
) -> None:
    pool = await make_pool(min_size=1, max_size=2)
    survival = Survival(pool)
    proxy.hang_new()
    # Both slots' connections die; their reconnects are accepted and ignored.
    proxy.close_all()
    attempts = await survival.leases(2, echo)
    assert all(isinstance(a.error, RedisPoolError) for a in attempts), attempts
    proxy.heal()
    await survival.recovers(echo)
    await assert_nothing_leaked(pool, watcher, proxy, client_name)


@pytest.mark.slow
async def test_resets_under_concurrent_load_never_cross_replies(
    make_pool: MakePool, proxy: FaultProxy, watcher: Redis, client_name: str
) -> None:
    pool = await make_pool(min_size=2, max_size=4)
    survival = Survival(pool)
    rng = random.Random(11)
    stop = asyncio.Event()

    async def chaos() -> None:
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.05, 0.25))
            proxy.reset_all()

    async def worker() -> int:
        served = 0
        while not stop.is_set():
            attempt = await survival.lease(echo)
            served += attempt.ok
            if not attempt.ok:
                await asyncio.sleep(0.01)  # back off, as a real client would
        return served

    injector = asyncio.create_task(chaos())
    workers = [asyncio.create_task(worker()) for _ in range(8)]
    await asyncio.sleep(3)
    stop.set()
    served = sum(await asyncio.gather(*workers))
    await injector
    assert served > 100
    proxy.heal()
    await survival.recovers(echo)
    await assert_nothing_leaked(pool, watcher, proxy, client_name)
