"""RedisClusterPool against a real three-master Redis Cluster started by the test.

One cluster per module (creating one takes about two seconds): tests use
their own key prefixes and never reconfigure it, except the last one, which
stops a node and so builds its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from resync.core.exceptions import PoolConfigError, RedisPoolError, RedisSetupError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.redis.cluster import RedisClusterPool
from resync.core.pools.redis.factory import create_redis_pool
from tests.helpers.redis_groups import RedisClusterGroup, redis_cli

pytestmark = [
    pytest.mark.redis,
    pytest.mark.slow,
]


def make_config(**overrides: Any) -> ConnectionPoolConfig:
    values: dict[str, Any] = {
        "pool_name": "cluster-test",
        "min_size": 1,
        "max_size": 4,
        "connection_timeout": 2.0,
    }
    values.update(overrides)
    return ConnectionPoolConfig(**values)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterGroup]:
    with RedisClusterGroup(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@contextlib.asynccontextmanager
async def opened(pool: RedisClusterPool) -> AsyncIterator[RedisClusterPool]:
    await pool.initialize()
    try:
        yield pool
    finally:
        await pool.close()


def client_ids(cluster: RedisClusterGroup, name: str) -> set[str]:
    """CLIENT LIST ids (per node) of the connections named ``name``."""
    ids: set[str] = set()
    for server in cluster.servers:
        for line in redis_cli(server.port, "CLIENT", "LIST").splitlines():
            if f"name={name} " in line:
                ids.add(f"{server.port}/{line.split()[0]}")
    return ids


async def test_create_redis_pool_picks_the_cluster_pool(cluster: RedisClusterGroup) -> None:
    assert isinstance(create_redis_pool(make_config(), cluster.url()), RedisClusterPool)


async def test_leases_reach_every_node_through_one_cluster_client(
    cluster: RedisClusterGroup,
) -> None:
    prefix = uuid.uuid4().hex[:8]
    async with opened(RedisClusterPool(make_config(), cluster.url())) as pool:
        async with pool.get_connection() as client:
            assert isinstance(client, RedisCluster)
            for i in range(60):
                await client.set(f"{prefix}:{i}", str(i))
            nodes = {client.get_node_from_key(f"{prefix}:{i}").port for i in range(60)}
            assert nodes == {s.port for s in cluster.servers}
        async with pool.get_connection() as client:
            assert await client.get(f"{prefix}:59") == "59"
        stats = pool.get_stats_snapshot()
        assert stats["details"]["topology"] == "cluster"
        assert stats["details"]["primaries"] == 3
        assert stats["connection_creations"] >= 3
        assert stats["pool_hits"] == 2
        assert await pool.health_check() is True


async def test_admission_caps_leases_at_max_size(cluster: RedisClusterGroup) -> None:
    prefix = uuid.uuid4().hex[:8]
    async with opened(RedisClusterPool(make_config(max_size=3), cluster.url())) as pool:

        async def one(i: int) -> None:
            async with pool.get_connection() as client:
                await client.incr(f"{prefix}:{i % 7}")

        await asyncio.gather(*(one(i) for i in range(200)))
        stats = pool.get_stats_snapshot()
        assert stats["peak_active"] == 3
        assert stats["pool_hits"] == 200
        async with pool.get_connection() as client:
            counts = [int(await client.get(f"{prefix}:{k}")) for k in range(7)]
        assert sum(counts) == 200
        # At most max_size connections per node, however many leases ran.
        for node in pool._nodes():
            assert len(node._connections) <= 3


async def test_redis_and_cluster_errors_come_out_in_the_redis_family(
    cluster: RedisClusterGroup,
) -> None:
    prefix = uuid.uuid4().hex[:8]
    async with opened(RedisClusterPool(make_config(), cluster.url())) as pool:
        with pytest.raises(RedisPoolError, match="cluster-test"):
            async with pool.get_connection() as client:
                await client.set(f"{prefix}:s", "text")
                await client.incr(f"{prefix}:s")
        # Keys of different slots in one MGET: redis-py refuses (RedisClusterException).
        with pytest.raises(RedisPoolError, match="all keys must map to the same key slot"):
            async with pool.get_connection() as client:
                await client.mget([f"a{prefix}", f"b{prefix}", f"c{prefix}"])
        async with pool.get_connection() as client:  # the pool is fine afterwards
            assert await client.get(f"{prefix}:s") == "text"


async def test_drain_replaces_every_connection_on_every_node(cluster: RedisClusterGroup) -> None:
    name = f"resync-cluster-{uuid.uuid4().hex[:8]}"
    pool = RedisClusterPool(make_config(min_size=2), cluster.url(), client_name=name)
    async with opened(pool):
        before = client_ids(cluster, name)
        assert len(before) >= 6  # min_size per primary
        created, closed = pool.stats.connection_creations, pool.stats.connection_closures
        assert await pool.drain(interval=0.2) == len(before)
        after = client_ids(cluster, name)
        assert not before & after
        assert len(after) == len(before)
        assert pool.stats.connection_closures - closed == len(before)
        assert pool.stats.connection_creations - created == len(before)


async def test_resize_changes_the_per_node_cap_and_closes_surplus_idle(
    cluster: RedisClusterGroup,
) -> None:
    prefix = uuid.uuid4().hex[:8]
    async with opened(RedisClusterPool(make_config(max_size=2), cluster.url())) as pool:
        await pool.resize(1, 6)

        async def one(i: int) -> None:
            async with pool.get_connection() as client:
                await client.set(f"{prefix}{{same}}:{i}", "x")  # one slot: one node
                await asyncio.sleep(0.05)

        await asyncio.gather(*(one(i) for i in range(12)))
        assert pool.get_stats_snapshot()["peak_active"] == 6
        busiest = max(len(node._connections) for node in pool._nodes())
        assert busiest == 6
        await pool.resize(0, 2)
        assert max(len(node._connections) for node in pool._nodes()) <= 2
        assert pool.get_stats_snapshot()["max_size"] == 2
        async with pool.get_connection() as client:
            assert await client.get(f"{prefix}{{same}}:0") == "x"


async def test_password_authenticates_at_every_node_and_is_never_shown(tmp_path: Path) -> None:
    with RedisClusterGroup(tmp_path, password="Cluster-Pw-4242") as own:
        async with opened(RedisClusterPool(make_config(), own.url())) as pool:
            assert "Cluster-Pw-4242" not in repr(pool)
            async with pool.get_connection() as client:
                for i in range(20):
                    await client.set(f"k{i}", "v")
            assert "Cluster-Pw-4242" not in str(pool.get_stats_snapshot())
        wrong = RedisClusterPool(make_config(), own.url(password="Wrong-Pw-1717"))
        try:
            with pytest.raises(RedisSetupError) as info:
                await wrong.initialize()
        finally:
            await wrong.close()
        assert "Wrong-Pw-1717" not in str(info.value)
        assert "cluster-test" in str(info.value)


def test_cluster_url_has_no_database_but_zero() -> None:
    with pytest.raises(PoolConfigError, match="only database 0"):
        RedisClusterPool(make_config(), "redis+cluster://127.0.0.1:7000/3")


async def test_a_stopped_node_fails_health_and_leases_with_typed_errors(tmp_path: Path) -> None:
    with RedisClusterGroup(tmp_path) as own:
        async with opened(RedisClusterPool(make_config(), own.url())) as pool:
            own.servers[2].stop()
            assert await pool.health_check() is False
            with pytest.raises(RedisPoolError):
                async with pool.get_connection() as client:
                    for i in range(30):  # some key lives on the stopped node
                        await client.set(f"k{i}", "v")
