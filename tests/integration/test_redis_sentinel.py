"""RedisSentinelPool against a real redis-sentinel watching a master and a replica.

Each test starts its own group (tests/helpers/redis_groups.py): a master, a
replica and one Sentinel on free loopback ports, so a failover here never
touches the shared Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from resync.core.exceptions import PoolConfigError, RedisPoolError, RedisSetupError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.redis.factory import create_redis_pool
from resync.core.pools.redis.sentinel import RedisSentinelPool
from tests.helpers.net import free_port
from tests.helpers.redis_groups import SentinelGroup, redis_cli

pytestmark = [
    pytest.mark.redis,
    pytest.mark.slow,
]


def make_config(**overrides: Any) -> ConnectionPoolConfig:
    values: dict[str, Any] = {
        "pool_name": "sentinel-test",
        "min_size": 2,
        "max_size": 4,
        "connection_timeout": 2.0,
        "idle_timeout": 60.0,
        "max_lifetime": 0.0,
    }
    values.update(overrides)
    return ConnectionPoolConfig(**values)


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    with SentinelGroup(tmp_path) as started:
        yield started


@contextlib.asynccontextmanager
async def opened(pool: RedisSentinelPool) -> AsyncIterator[RedisSentinelPool]:
    await pool.initialize()
    try:
        yield pool
    finally:
        await pool.close()


async def served_by(client: Any) -> int:
    """The port of the server that answered (INFO server's tcp_port)."""
    info = await client.info("server")
    return int(info["tcp_port"])


def clients_named(port: int, name: str) -> int:
    return redis_cli(port, "CLIENT", "LIST").count(f"name={name} ")


async def test_create_redis_pool_picks_the_sentinel_pool_for_a_sentinel_url(
    group: SentinelGroup,
) -> None:
    pool = create_redis_pool(make_config(), group.url())
    assert isinstance(pool, RedisSentinelPool)
    assert pool.target.service_name == "mymaster"


async def test_leases_reach_the_master_sentinel_names(group: SentinelGroup) -> None:
    # The first Sentinel listed is down: the pool asks the next one.
    url = group.url(db=2).replace("://", f"://127.0.0.1:{free_port()},", 1)
    async with opened(RedisSentinelPool(make_config(), url)) as pool:
        async with pool.get_connection() as client:
            assert await client.set("k", "v") is True
            assert await served_by(client) == group.master.port
            assert (await client.execute_command("ROLE"))[0] == "master"
            assert int((await client.client_info())["db"]) == 2
        stats = pool.get_stats_snapshot()
        assert stats["details"]["topology"] == "sentinel"
        assert stats["details"]["master"] == f"127.0.0.1:{group.master.port}"
        assert stats["connection_creations"] >= 2
        assert await pool.health_check() is True


async def test_failover_moves_every_connection_and_writes_reach_the_new_master(
    group: SentinelGroup,
) -> None:
    name = f"resync-sentinel-{uuid.uuid4().hex[:8]}"
    # A long poll interval: noticing the switch quickly proves the subscription works.
    pool = RedisSentinelPool(
        make_config(min_size=3, max_size=4), group.url(), client_name=name, watch_interval=30.0
    )
    old_port = group.master.port
    errors: list[BaseException] = []
    successes_after: list[float] = []
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        while not stop.is_set():
            try:
                async with pool.get_connection() as client:
                    await client.incr(f"load:{n}")
                successes_after.append(time.monotonic())
            except RedisPoolError as exc:  # typed, during the failover only
                errors.append(exc)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.01)

    async with opened(pool):
        assert clients_named(old_port, name) == 3
        workers = [asyncio.create_task(writer(n)) for n in range(4)]
        try:
            await asyncio.sleep(0.3)
            new_port = await asyncio.to_thread(group.failover)
            switched_at = time.monotonic()
            # The pool follows +switch-master at once, not after watch_interval.
            deadline = switched_at + 5.0
            while pool.master != ("127.0.0.1", new_port):
                assert time.monotonic() < deadline, "the pool did not notice the switch"
                await asyncio.sleep(0.05)
            assert pool.failovers_seen == 1
            # Leases continue: every write issued from now on reaches the new master,
            # while the old one has not even been demoted yet (Sentinel takes ~10 s).
            direct = aioredis.Redis(port=new_port, decode_responses=True)
            try:
                for i in range(20):
                    async with pool.get_connection() as client:
                        await client.set(f"after:{i}", "x")
                        assert await served_by(client) == new_port
                    assert await direct.get(f"after:{i}") == "x"
            finally:
                await direct.aclose()
            errors_before_recovery = len(errors)
            await asyncio.sleep(0.5)
            assert len(errors) == errors_before_recovery, errors[errors_before_recovery:]
            assert successes_after[-1] > switched_at
        finally:
            stop.set()
            await asyncio.gather(*workers)
        # No connection of the pool is left on the old master.
        deadline = time.monotonic() + 5.0
        while clients_named(old_port, name):
            assert time.monotonic() < deadline, redis_cli(old_port, "CLIENT", "LIST")
            await asyncio.sleep(0.1)
        assert pool.get_stats_snapshot()["details"]["master"] == f"127.0.0.1:{new_port}"
    for error in errors:
        assert isinstance(error, RedisPoolError)


async def test_drain_replaces_every_connection_behind_sentinel(group: SentinelGroup) -> None:
    name = f"resync-sentinel-{uuid.uuid4().hex[:8]}"
    async with opened(
        RedisSentinelPool(make_config(min_size=3, max_size=3), group.url(), client_name=name)
    ) as pool:
        before = {line for line in redis_cli(group.master.port, "CLIENT", "LIST").splitlines()}
        ids_before = {line.split()[0] for line in before if f"name={name} " in line}
        assert len(ids_before) == 3
        assert await pool.drain(interval=0.1) == 3
        after = redis_cli(group.master.port, "CLIENT", "LIST").splitlines()
        ids_after = {line.split()[0] for line in after if f"name={name} " in line}
        assert len(ids_after) == 3
        assert not ids_before & ids_after


async def test_unreachable_sentinels_fail_setup_without_showing_passwords() -> None:
    url = f"redis+sentinel://:master-Secret-99@127.0.0.1:{free_port()}/mymaster"
    pool = RedisSentinelPool(
        make_config(connection_timeout=1.0), url, sentinel_password="sentinel-Secret-77"
    )
    assert "master-Secret-99" not in repr(pool)
    with pytest.raises(RedisSetupError) as info:
        await pool.initialize()
    text = f"{info.value} {info.value.__cause__}"
    assert "master-Secret-99" not in str(info.value)
    assert "sentinel-Secret-77" not in str(info.value)
    assert "Failed to setup pool 'sentinel-test'" in text
    await pool.close()


def test_sentinel_url_needs_a_service_name() -> None:
    with pytest.raises(PoolConfigError, match="service name"):
        RedisSentinelPool(make_config(), "redis+sentinel://127.0.0.1:26379")
