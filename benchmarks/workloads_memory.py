"""Leases with no I/O at all, and resident memory across a million leases.

``lease: no I/O``: check out, yield once to the loop, check in, on resync's
``InMemoryPool`` (the base pool's lease path alone), ``ResourcePool`` (with
trivial resources) and ``HTTPConnectionPool`` (a lease hands out the shared
client; nothing is sent), beside ``asyncio.Semaphore(10)`` as the floor of
what any asyncio admission can cost (a reference, not a peer).

RSS: ``RSS_LEASES`` leases in a row on the in-memory pool and on the database
pool's lease path (embedded SQLite: the same session binding, commit and
check-in as PostgreSQL, without the network). The resident set is read after
a warm-up and again at the end, after a collection both times.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from typing import Any

from benchmarks.harness import Op, Row, compare, emit, settle
from resync.core.pools.base_pool import ConnectionPool, ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.pools.resource.pool import ResourcePool
from resync.testing import InMemoryPool

__all__ = ["PLAN", "RSS_TARGET", "run_lease", "run_rss"]

POOL_SIZE = 10
TIMEOUT = 30.0
RSS_TARGET = 5.0  # percent
IMPLS = (
    "resync InMemoryPool",
    "resync ResourcePool",
    "resync HTTPConnectionPool",
    "asyncio.Semaphore",
)
PLAN: list[tuple[str, tuple[str, ...]]] = [("lease: no I/O", IMPLS)]


def _config(name: str, min_size: int = POOL_SIZE) -> ConnectionPoolConfig:
    return ConnectionPoolConfig(
        pool_name=name, min_size=min_size, max_size=POOL_SIZE, connection_timeout=TIMEOUT
    )


def _lease_op(pool: ConnectionPool[Any]) -> Op:
    lease, yield_once = pool.get_connection, asyncio.sleep

    async def op() -> None:
        async with lease():
            await yield_once(0)

    return op


async def run_lease(loop: str, rounds: int, duration: float) -> list[Row]:
    """``lease: no I/O`` for every resync pool that has no server behind it."""
    memory = InMemoryPool(_config("bench-memory"))
    resources = ResourcePool(_config("bench-resource"), create=object, close=lambda _: None)
    # min_size=0: no connection is opened, and a lease sends nothing.
    http = HTTPConnectionPool(_config("bench-http-lease", min_size=0), "http://127.0.0.1:9")
    pools: list[ConnectionPool[Any]] = [memory, resources, http]
    for pool in pools:
        await pool.initialize()
    semaphore = asyncio.Semaphore(POOL_SIZE)
    yield_once = asyncio.sleep

    async def via_semaphore() -> None:
        async with semaphore:
            await yield_once(0)

    ops = dict(zip(IMPLS, [*(_lease_op(p) for p in pools), via_semaphore], strict=True))
    settle()
    try:
        return await compare(
            "lease", "lease: no I/O", ops, loop=loop, rounds=rounds, duration=duration
        )
    finally:
        for pool in pools:
            await pool.close()


def rss_bytes() -> int:
    """The resident set of this process now (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


async def _rss_drift(
    name: str, pool: ConnectionPool[Any], leases: int, warmup: int
) -> dict[str, Any]:
    await pool.initialize()
    lease = pool.get_connection
    try:
        for _ in range(warmup):
            async with lease():
                pass
        gc.collect()
        before = rss_bytes()
        checkpoints: list[int] = []
        step = max(1, leases // 10)
        start = time.perf_counter()
        for i in range(1, leases + 1):
            async with lease():
                pass
            if i % step == 0:
                checkpoints.append(rss_bytes())
                emit("tick", workload="rss", impl=name, done=i)
        seconds = time.perf_counter() - start
        gc.collect()
        after = rss_bytes()
    finally:
        await pool.close()
    drift = (after - before) / before * 100 if before else 0.0
    return {
        "pool": name,
        "leases": leases,
        "warmup_leases": warmup,
        "rss_after_warmup_mb": round(before / 2**20, 2),
        "rss_at_end_mb": round(after / 2**20, 2),
        "drift_percent": round(drift, 2),
        "checkpoints_mb": [round(c / 2**20, 2) for c in checkpoints],
        "leases_per_s": round(leases / seconds, 1),
        "met": abs(drift) <= RSS_TARGET,
    }


async def run_rss(leases: int, db_leases: int, warmup: int = 20_000) -> list[dict[str, Any]]:
    """RSS drift across ``leases`` in-memory and ``db_leases`` database leases."""
    memory = InMemoryPool(_config("rss-memory"))
    database = DatabaseConnectionPool(_config("rss-db"), "sqlite+aiosqlite:///:memory:")
    settle()
    return [
        await _rss_drift("resync InMemoryPool", memory, leases, warmup),
        await _rss_drift("resync DatabaseConnectionPool (SQLite)", database, db_leases, warmup),
    ]


RSS_TICKS = 20  # two pools, ten checkpoints each
