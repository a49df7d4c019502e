"""Stats are exact under concurrency and the wait-time window stays bounded."""

from __future__ import annotations

import asyncio
import statistics

import pytest

from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.kernel.stats import STAT_FIELDS, WaitTimeWindow
from resync.testing import InMemoryPool

REQUIRED_KEYS = {
    "pool_hits",
    "pool_misses",
    "active_connections",
    "idle_connections",
    "waiting_connections",
    "pool_exhaustions",
    "connection_errors",
    "connection_creations",
    "connection_closures",
    "average_wait_time",
    "last_health_check",
    "min_size",
    "max_size",
    "capacity",
    "pool_name",
    "backend",
    "state",
}


def make_pool() -> InMemoryPool:
    return InMemoryPool(ConnectionPoolConfig(pool_name="stats", min_size=2, max_size=5))


async def test_concurrent_increments_are_exact() -> None:
    pool = make_pool()
    await pool.initialize()

    async def bump() -> None:
        for _ in range(100):
            await pool.increment_stat("pool_hits")
            await asyncio.sleep(0)

    await asyncio.gather(*(bump() for _ in range(10)))
    assert pool.stats.pool_hits == 1000
    assert pool.get_stats_snapshot()["pool_hits"] == 1000
    await pool.close()


async def test_increment_stat_accepts_negative_amounts_and_rejects_unknown_names() -> None:
    pool = make_pool()
    await pool.increment_stat("active_connections", 3)
    await pool.increment_stat("active_connections", -1)
    assert pool.stats.active_connections == 2
    with pytest.raises(AttributeError, match="no stat 'nonsense'"):
        await pool.increment_stat("nonsense")


async def test_wait_time_window_is_bounded_after_5000_updates() -> None:
    pool = make_pool()
    for i in range(5000):
        await pool.update_wait_time(i / 1000)
    assert len(pool._wait_times) == pool.MAX_WAIT_TIMES == 1000
    assert pool._wait_times.maxlen == 1000
    expected = statistics.fmean(i / 1000 for i in range(4000, 5000))
    assert pool.stats.average_wait_time == pytest.approx(expected)


def test_running_average_matches_the_exact_mean_over_a_sliding_window() -> None:
    window = WaitTimeWindow(maxlen=7)
    values = [((i * 7919) % 101) / 10 for i in range(500)]
    for i, value in enumerate(values):
        average = window.add(value)
        assert average == pytest.approx(statistics.fmean(values[max(0, i - 6) : i + 1]))


async def test_lease_stats_count_hits_waits_creations_and_idle() -> None:
    pool = make_pool()
    await pool.initialize()
    assert pool.get_stats_snapshot()["idle_connections"] == 2
    async with pool.get_connection(), pool.get_connection(), pool.get_connection():
        snap = pool.get_stats_snapshot()
        assert snap["active_connections"] == 3
        assert snap["idle_connections"] == 0
    snap = pool.get_stats_snapshot()
    assert snap["pool_hits"] == 3
    assert snap["connection_creations"] == 3
    assert snap["active_connections"] == 0
    assert snap["idle_connections"] == 3
    assert snap["average_wait_time"] >= 0
    assert pool.wait_histogram.count == 3
    assert pool.use_histogram.count == 3
    await pool.close()
    assert pool.get_stats_snapshot()["connection_closures"] == 3


async def test_snapshot_has_one_schema_with_every_stat_and_the_config_sizes() -> None:
    pool = make_pool()
    snap = pool.get_stats_snapshot()
    assert set(snap) >= REQUIRED_KEYS
    assert set(STAT_FIELDS) <= set(snap)
    assert snap["min_size"] == 2 and snap["max_size"] == 5 and snap["capacity"] == 5
    assert snap["pool_name"] == "stats" and snap["backend"] == "memory"
    assert snap["state"] == "new"
