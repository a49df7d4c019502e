"""The adaptive limit (Gradient2) on exact inputs: a fake clock and chosen lease times.

No real time is measured: each window is ten samples 1/64 s apart (a window
closes after 10 samples and 0.1 s), so every figure below is deterministic.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import generate_latest

from resync.core.pools import ConnectionPoolConfig
from resync.core.pools.kernel.adaptive import AdaptiveLimit, LeaseTimeFeed
from resync.core.pools.kernel.admission import AdmissionGate
from resync.core.prometheus import build_registry
from resync.testing.memory_pool import InMemoryPool


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(ceiling: int = 20, floor: int = 1) -> tuple[AdmissionGate, AdaptiveLimit, FakeClock]:
    clock = FakeClock()
    gate = AdmissionGate(ceiling)
    return gate, AdaptiveLimit(gate, floor, ceiling, clock=clock), clock


def feed(
    gate: AdmissionGate,
    limit: AdaptiveLimit,
    clock: FakeClock,
    rtt: float,
    windows: int,
    inflight: int | None = None,
) -> list[int]:
    """``windows`` windows of lease times ``rtt``; the limit after each."""
    after = []
    for _ in range(windows):
        for _ in range(10):
            clock.now += 1 / 64
            limit.sample(rtt, gate.capacity if inflight is None else inflight)
        after.append(limit.limit)
    return after


def test_steady_lease_times_keep_the_limit_at_max_size() -> None:
    gate, limit, clock = make()
    assert feed(gate, limit, clock, 0.01, 40) == [20] * 40
    assert limit.samples == 400
    assert abs(limit.long_rtt - 0.01) < 1e-12
    assert gate.capacity == 20 and gate.ceiling == 20


def test_when_lease_times_double_the_limit_drops_then_settles_back() -> None:
    gate, limit, clock = make()
    feed(gate, limit, clock, 0.01, 40)
    after = feed(gate, limit, clock, 0.02, 60)
    # The first window at twice the lease time: gradient = long/short = 0.532,
    # limit = 0.8 * 20 + 0.2 * (0.532 * 20 + sqrt(20)) = 19.02.
    assert after[0] == 19
    assert min(after) == 15  # by at most 10 % a window, down to 75 %
    # Settled: within 10 % of the new steady value (20) from window 20 on, at
    # 20 itself from window 25 on (the long average has caught up).
    assert all(value >= 18 for value in after[19:])
    assert after[24:] == [20] * 36
    assert abs(limit.long_rtt - 0.02) < 0.0005


def test_app_limited_windows_leave_the_limit_alone() -> None:
    gate, limit, clock = make()
    feed(gate, limit, clock, 0.01, 20)
    # Fewer than half the limit in use: slower leases say nothing about concurrency.
    assert feed(gate, limit, clock, 0.05, 10, inflight=9) == [20] * 10
    assert abs(limit.short_rtt - 0.05) < 1e-12


def test_a_lasting_slowdown_stops_at_four_or_the_floor() -> None:
    gate, limit, clock = make(ceiling=20, floor=1)
    feed(gate, limit, clock, 0.01, 20)
    for step in range(1, 60):  # the gradient stays at its 0.5 clamp
        feed(gate, limit, clock, 0.01 * 2**step, 1)
    # 0.5 * L + sqrt(L) = L at L = 4: the queue allowance keeps four leases going.
    assert limit.limit == 4


def test_the_limit_never_leaves_its_bounds() -> None:
    gate, limit, clock = make(ceiling=10, floor=6)
    feed(gate, limit, clock, 0.01, 20)
    for step in range(1, 30):  # lease times keep climbing: the limit falls to the floor
        feed(gate, limit, clock, 0.01 * 2**step, 1)
    assert limit.limit == 6 and gate.capacity == 6
    limit.set_bounds(1, 2)
    assert limit.limit == 2 and gate.ceiling == 2
    assert [t for t, _ in limit.history] == sorted(t for t, _ in limit.history)


def test_a_pool_with_adaptive_limit_feeds_it_and_shows_it() -> None:
    async def main() -> dict[str, Any]:
        pool = InMemoryPool(
            ConnectionPoolConfig(
                pool_name="ad",
                min_size=0,
                max_size=4,
                adaptive_limit=True,
                health_check_interval=0,
            )
        )
        await pool.initialize()
        assert isinstance(pool.use_histogram, LeaseTimeFeed)
        for _ in range(3):
            async with pool.get_connection():
                pass
        pool.gate.resize(2)  # as the limit would after a slow window
        entered = asyncio.Event()
        release = asyncio.Event()

        async def hold() -> None:
            async with pool.get_connection():
                entered.set()
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        await entered.wait()
        third = asyncio.create_task(hold())
        await asyncio.sleep(0)
        queued = pool.gate.waiting
        release.set()
        await asyncio.gather(*holders, third)
        snapshot = pool.get_stats_snapshot()["admission"]["adaptive"]
        text = generate_latest(build_registry(lambda: {"ad": pool})).decode()
        await pool.close()
        return {"queued": queued, "snapshot": snapshot, "text": text}

    out = asyncio.run(main())
    assert out["queued"] == 1
    snapshot = out["snapshot"]
    assert snapshot["algorithm"] == "gradient2"
    assert (snapshot["limit"], snapshot["min"], snapshot["max"]) == (2, 1, 4)
    assert snapshot["samples"] == 6 and snapshot["drops"] == 1
    labels = 'backend="memory",db_client_connection_pool_name="ad",pool="ad"'
    assert f"resync_pool_adaptive_limit{{{labels}}} 2.0" in out["text"]
    assert f"resync_pool_adaptive_limit_drops_total{{{labels}}} 1.0" in out["text"]
    assert f"resync_pool_queue_dropping{{{labels}}} 0.0" in out["text"]


def test_without_adaptive_limit_the_use_histogram_is_plain() -> None:
    pool = InMemoryPool(ConnectionPoolConfig(pool_name="plain"))
    assert type(pool.use_histogram).__name__ == "Histogram"
    assert pool.adaptive_limit is None


def test_resize_moves_the_adaptive_limits_bounds_not_past_them() -> None:
    async def main() -> list[tuple[int, int, int]]:
        pool = InMemoryPool(
            ConnectionPoolConfig(
                pool_name="rs",
                min_size=2,
                max_size=8,
                adaptive_limit=True,
                health_check_interval=0,
            )
        )
        await pool.initialize()
        limit = pool.adaptive_limit
        assert limit is not None
        seen = [(limit.floor, limit.limit, limit.ceiling)]
        await pool.resize(1, 4)  # shrink: the limit is clamped to the new max_size
        seen.append((limit.floor, limit.limit, limit.ceiling))
        await pool.resize(3, 12)  # grow: the limit keeps its estimate (4) until leases raise it
        seen.append((limit.floor, limit.limit, limit.ceiling))
        await pool.close()
        return seen

    assert asyncio.run(main()) == [(2, 8, 8), (1, 4, 4), (3, 4, 12)]
