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
import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from benchmarks.harness import Op, Row, compare, emit, settle
from resync.core.pools.base_pool import ConnectionPool, ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.pools.resource.pool import ResourcePool
from resync.testing import InMemoryPool

__all__ = ["PLAN", "RSS_TARGET", "rss_bytes", "rss_drift", "run_lease", "run_rss"]

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


Lease = Callable[[], AbstractAsyncContextManager[Any]]


async def _drive(
    lease: Lease,
    total: int,
    callers: int,
    *,
    step: int = 0,
    on_step: Callable[[int], None] | None = None,
    deadline: float = math.inf,
    yield_once: bool = False,
) -> int:
    """``total`` empty leases by ``callers`` concurrent callers (fewer past ``deadline``).

    ``yield_once``: each lease yields to the loop once while held, so the
    callers really overlap (a lease that does no I/O never suspends, and a
    caller then takes all its leases before the next caller runs).
    """
    issued = done = 0
    perf = time.perf_counter
    pause = asyncio.sleep

    async def caller() -> None:
        nonlocal issued, done
        while issued < total and perf() < deadline:
            issued += 1
            async with lease():
                if yield_once:
                    await pause(0)
            done += 1
            if on_step is not None and done % step == 0:
                on_step(done)

    await asyncio.gather(*(caller() for _ in range(callers)))
    return done


async def rss_drift(
    name: str,
    lease: Lease,
    leases: int,
    warmup: int,
    *,
    callers: int = 1,
    step: int = 0,
    budget: float = math.inf,
    yield_once: bool = False,
) -> dict[str, Any]:
    """The resident set across ``leases`` empty leases of ``lease``, read every ``step``.

    Read after ``warmup`` leases and a collection (the start), every ``step``
    leases (default a tenth), and at the end after a collection. A run that
    reaches ``budget`` seconds stops there; ``leases`` then says how many ran
    (``planned_leases`` how many were asked for).
    """
    await _drive(lease, warmup, callers, yield_once=yield_once)
    gc.collect()
    before = rss_bytes()
    checkpoints: list[int] = []
    step = step or max(1, leases // 10)

    def sample(done: int) -> None:
        checkpoints.append(rss_bytes())
        emit("tick", workload="rss", impl=name, done=done)

    start, cpu = time.perf_counter(), time.process_time()
    done = await _drive(
        lease,
        leases,
        callers,
        step=step,
        on_step=sample,
        deadline=start + budget,
        yield_once=yield_once,
    )
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    for missed in range(len(checkpoints), leases // step):  # the progress bar's share
        emit("tick", workload="rss", impl=name, done=done, skipped=missed)
    gc.collect()
    after = rss_bytes()
    drift = (after - before) / before * 100 if before else 0.0
    mb = 2**-20
    return {
        "pool": name,
        "leases": done,
        "planned_leases": leases,
        "callers": callers,
        "yield_once": yield_once,
        "warmup_leases": warmup,
        "rss_after_warmup_mb": round(before * mb, 2),
        "rss_at_end_mb": round(after * mb, 2),
        "max_growth_mb": round((max([*checkpoints, after]) - before) * mb, 2),
        "drift_percent": round(drift, 2),
        "checkpoints_mb": [round(c * mb, 2) for c in checkpoints],
        "sample_every": step,
        "leases_per_s": round(done / seconds, 1) if seconds else 0.0,
        "cpu_seconds": round(cpu, 1),
        "met": abs(drift) <= RSS_TARGET,
    }


async def run_rss(leases: int, db_leases: int, warmup: int = 20_000) -> list[dict[str, Any]]:
    """RSS drift across ``leases`` in-memory and ``db_leases`` database leases."""
    memory = InMemoryPool(_config("rss-memory"))
    database = DatabaseConnectionPool(_config("rss-db"), "sqlite+aiosqlite:///:memory:")
    settle()
    found = []
    for name, pool, count in (
        ("resync InMemoryPool", memory, leases),
        ("resync DatabaseConnectionPool (SQLite)", database, db_leases),
    ):
        async with pool:
            found.append(await rss_drift(name, pool.get_connection, count, warmup))
    return found


#: Progress ticks of the ``rss`` part: ten readings per row (two pools here, and
#: the three PostgreSQL lease kinds twice in benchmarks.rss_leases).
RSS_TICKS = 10 * (2 + 3 * 2)
