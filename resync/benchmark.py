"""``resync bench``: how fast are *your* configured pools, on this machine?

Opens the pools the settings enable (as the service would), then, for each
pool and a few concurrencies, runs closed-loop workers for a short while:

- ``lease``: check out, yield once to the event loop, check in -- what the pool
  itself costs (plus whatever its lease sends: the database pool's
  ``BEGIN`` / ``ROLLBACK``);
- ``round trip``: the same lease plus the pool's health round trip on the
  leased connection (``SELECT 1``, ``PING``, a request to the health path).

Each worker measures from asking for the lease to being done, so queueing
for a slot counts. This is a quick look at a deployment's own pools; the
comparison with the drivers' own pools is the repository's ``make bench``.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from resync.core.pools.base_pool import ConnectionPool

__all__ = ["DEFAULT_CONCURRENCY", "PoolBenchResult", "bench_pool", "bench_settings"]

DEFAULT_CONCURRENCY = (1, 10, 100)

Op = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PoolBenchResult:
    """One pool, one kind of operation, one concurrency."""

    pool: str
    backend: str
    operation: str
    concurrency: int
    ops: int
    seconds: float
    errors: int
    mean: float
    p50: float
    p99: float

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def p99_over_mean(self) -> float:
        return self.p99 / self.mean if self.mean else 0.0


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


async def _closed_loop(
    op: Op, concurrency: int, duration: float, warmup: float
) -> tuple[int, int, list[float]]:
    perf = time.perf_counter
    latencies: list[float] = []
    errors = 0
    # Fixed up front: an op that never suspends (a ping with no I/O) then
    # still ends the run, one worker at a time, instead of spinning forever.
    start = perf() + warmup
    stop = start + duration

    async def worker() -> None:
        nonlocal errors
        while True:
            t0 = perf()
            if t0 >= stop:
                return
            try:
                await op()
            except Exception:
                errors += t0 >= start
                await asyncio.sleep(0)
                continue
            if t0 >= start:
                latencies.append(perf() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    return len(latencies), errors, latencies


async def bench_pool(
    pool: ConnectionPool[Any],
    *,
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
    duration: float = 1.0,
    warmup: float = 0.2,
    on_result: Callable[[PoolBenchResult], None] | None = None,
) -> list[PoolBenchResult]:
    """Lease-only and round-trip figures of an initialized ``pool``.

    Errors (a timeout, a failed round trip) are counted, not raised.
    Cancelling the caller cancels the workers; their leases are returned.
    """
    lease, ping, yield_once = pool.get_connection, pool.ping, asyncio.sleep

    async def lease_only() -> None:
        async with lease():
            await yield_once(0)

    async def round_trip() -> None:
        async with lease() as conn:
            await ping(conn)

    results: list[PoolBenchResult] = []
    for operation, op in (("lease", lease_only), ("round trip", round_trip)):
        for conc in concurrency:
            ops, errors, lat = await _closed_loop(op, conc, duration, warmup)
            result = PoolBenchResult(
                pool=pool.name,
                backend=pool.backend,
                operation=operation,
                concurrency=conc,
                ops=ops,
                seconds=duration,
                errors=errors,
                mean=statistics.fmean(lat) if lat else 0.0,
                p50=_quantile(lat, 0.5),
                p99=_quantile(lat, 0.99),
            )
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


async def bench_settings(
    settings: object,
    *,
    pools: Sequence[str] = (),
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
    duration: float = 1.0,
    on_result: Callable[[PoolBenchResult], None] | None = None,
) -> list[PoolBenchResult]:
    """:func:`bench_pool` for every pool ``settings`` enable (or those named in ``pools``).

    Each pool is opened, measured and closed in turn; a pool that cannot open
    raises its setup error after the pools opened before it are closed.
    """
    from resync.core.pools.manager.specs import build_pools

    results: list[PoolBenchResult] = []
    for spec, pool in build_pools(settings):
        if pools and spec.name not in pools:
            continue
        try:
            await pool.initialize()
            results += await bench_pool(
                pool, concurrency=concurrency, duration=duration, on_result=on_result
            )
        finally:
            await pool.close(drain_timeout=0)
    return results
