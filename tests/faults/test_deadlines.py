"""No lease, statement or upstream call outlives the caller's deadline (issue 17).

Each backend is reached through a fault proxy that black-holes the network
(sockets stay open, nothing moves) in the middle of a lease. The pools' own
timeouts are seconds (``connection_timeout`` 5 s, PostgreSQL's statement
timeout 30 s), the deadline is ``BUDGET``: every call must end with the
pool family's ``DeadlineExceededError`` within ``BUDGET + OVERSHOOT``, and a
call after the deadline must fail at once (within ``AT_ONCE``). The issue
asks for 20 ms of overshoot; the bound asserted here is 50 ms because the
machine that runs the suite is 2 cores shared by several test runs (a loop
stall of a few tens of ms is routine there); the measured overshoots are
printed (``-s``) and quoted in the issue's report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

import resync
from resync.core.exceptions import (
    DatabaseDeadlineExceededError,
    DeadlineExceededError,
    HTTPDeadlineExceededError,
    RedisDeadlineExceededError,
)
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.pools.redis_pool import RedisConnectionPool
from tests.faults.conftest import proxied_pg_url
from tests.faults.proxy import FaultProxy
from tests.helpers.upstream import Upstream

BUDGET = 0.2
#: Allowed lateness past the deadline (the issue's target is 0.02 s; see the docstring).
OVERSHOOT = 0.05
#: A call after the deadline: refused with no I/O.
AT_ONCE = 0.02
ROUNDS = 5

#: Worst overshoot seen per scenario, printed at the end of each test.
OVERSHOOTS: dict[str, list[float]] = {}


def config(name: str, **overrides: Any) -> ConnectionPoolConfig:
    values: dict[str, Any] = {
        "pool_name": name,
        "min_size": 1,
        "max_size": 2,
        "connection_timeout": 5.0,
        "drain_timeout": 1.0,
    }
    values.update(overrides)
    return ConnectionPoolConfig(**values)


async def timed(
    scenario: str, kind: type[DeadlineExceededError], call: Callable[[], Awaitable[object]]
) -> float:
    """Run ``call`` inside a ``BUDGET`` deadline; it must fail with ``kind`` in time."""
    started = time.monotonic()
    with resync.deadline(BUDGET), pytest.raises(kind) as caught:
        await call()
    elapsed = time.monotonic() - started
    overshoot = elapsed - BUDGET
    OVERSHOOTS.setdefault(scenario, []).append(overshoot)
    assert caught.value.pool_name is not None
    assert "deadline" in str(caught.value) and "not the pool" in str(caught.value)
    assert elapsed >= BUDGET - 0.005, f"{scenario}: ended {elapsed:.3f}s, before the deadline"
    assert overshoot < OVERSHOOT, f"{scenario}: {overshoot * 1000:.1f} ms past the deadline"
    return overshoot


async def refused_at_once(
    kind: type[DeadlineExceededError], call: Callable[[], Awaitable[object]]
) -> None:
    """With the deadline already passed, ``call`` fails at once with ``kind``."""
    with resync.deadline(0.001):
        await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(kind):
            await call()
        assert time.monotonic() - started < AT_ONCE


def report(prefix: str) -> None:
    for scenario, values in sorted(OVERSHOOTS.items()):
        if scenario.startswith(prefix):
            worst = max(values) * 1000
            mean = sum(values) / len(values) * 1000
            print(f"\n[deadline overshoot] {scenario}: worst {worst:.1f} ms, mean {mean:.1f} ms")


# --- PostgreSQL ------------------------------------------------------------------------


@pytest.mark.postgres
async def test_postgres_black_hole_no_lease_or_statement_outlives_its_deadline(
    pg_url: str, pg_proxy: FaultProxy
) -> None:
    pool = DatabaseConnectionPool(
        config("deadline-pg"), proxied_pg_url(pg_url, pg_proxy), statement_timeout=30
    )
    await pool.initialize()
    try:
        for _ in range(ROUNDS):
            pids: list[int] = []

            async def statement(pids: list[int] = pids) -> None:
                async with pool.get_connection() as session:
                    pids.append(
                        (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                    )
                    pg_proxy.blackhole()
                    await session.execute(text("SELECT 1"))

            await timed("pg statement (session)", DatabaseDeadlineExceededError, statement)

            async def driver_statement() -> None:
                async with pool.driver_connection() as conn:
                    await conn.execute("SELECT 1")

            # Black-holed: the checkout's validation (or its connect) hangs.
            await timed("pg lease (checkout)", DatabaseDeadlineExceededError, driver_statement)

            async def lease() -> None:
                async with pool.connection():
                    pass

            await refused_at_once(DatabaseDeadlineExceededError, lease)
            pg_proxy.heal()
            # The connection cut off at the deadline was discarded, never reused.
            async with pool.get_connection() as session:
                pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            assert pid != pids[0]
        stats = pool.get_stats_snapshot()
        assert stats["deadline_exceeded"] >= 3 * ROUNDS
        assert stats["pool_exhaustions"] == 0
        assert pool.gate.in_use == 0
    finally:
        pg_proxy.heal()
        await pool.close()
    report("pg")


# --- Redis ----------------------------------------------------------------------------


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[FaultProxy]:
    port = httpx.URL(redis_url).port or 6379
    with FaultProxy(("127.0.0.1", port)) as proxy:
        yield proxy


@pytest.mark.redis
async def test_redis_black_hole_no_command_outlives_its_deadline(
    redis_url: str, redis_proxy: FaultProxy
) -> None:
    database = httpx.URL(redis_url).path or "/15"
    url = f"redis://{redis_proxy.host}:{redis_proxy.port}{database}"
    pool = RedisConnectionPool(config("deadline-redis"), url)
    await pool.initialize()
    try:
        for _ in range(ROUNDS):

            async def command() -> None:
                async with pool.get_connection() as client:
                    await client.set("resync:deadline", "1")
                    redis_proxy.blackhole()
                    await client.get("resync:deadline")

            await timed("redis command", RedisDeadlineExceededError, command)

            async def lease() -> None:
                async with pool.get_connection() as client:
                    await client.get("resync:deadline")

            # Black-holed: the lease's (re)connect hangs.
            await timed("redis lease (connect)", RedisDeadlineExceededError, lease)
            await refused_at_once(RedisDeadlineExceededError, lease)
            redis_proxy.heal()

            async def pipeline() -> None:
                async with pool.get_connection() as client:
                    await client.ping()
                    redis_proxy.blackhole()
                    async with client.pipeline(transaction=False) as pipe:
                        pipe.get("a")
                        pipe.get("b")
                        await pipe.execute()

            await timed("redis pipeline", RedisDeadlineExceededError, pipeline)
            redis_proxy.heal()

            async def late_command() -> None:
                async with pool.get_connection() as client:
                    await client.ping()
                    await asyncio.sleep(BUDGET)
                    started = time.monotonic()
                    try:
                        await client.get("resync:deadline")
                    finally:
                        assert time.monotonic() - started < AT_ONCE

            with resync.deadline(BUDGET / 2), pytest.raises(RedisDeadlineExceededError):
                await late_command()  # a command after the deadline: refused, nothing sent
            async with pool.get_connection() as client:
                assert await client.get("resync:deadline") == "1"
                # Outside the deadline the connection has its own timeouts back.
                conn = client.connection_pool._connection  # type: ignore[attr-defined]
                assert conn.socket_timeout == pool.config.connection_timeout
        stats = pool.get_stats_snapshot()
        assert stats["deadline_exceeded"] >= 5 * ROUNDS
        assert pool.gate.in_use == 0
    finally:
        redis_proxy.heal()
        await pool.close()
    report("redis")


# --- HTTP -----------------------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as running:
        yield running


@pytest.fixture
def http_proxy(upstream: Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", upstream.port)) as proxy:
        yield proxy


@pytest.fixture
async def http_pool(http_proxy: FaultProxy) -> AsyncIterator[HTTPConnectionPool]:
    pool = HTTPConnectionPool(
        config("deadline-http"), f"http://{http_proxy.host}:{http_proxy.port}", health_path="/ok"
    )
    await pool.initialize()
    yield pool
    http_proxy.heal()
    await pool.close()


async def test_http_black_hole_no_upstream_call_outlives_its_deadline(
    http_pool: HTTPConnectionPool, http_proxy: FaultProxy
) -> None:
    for _ in range(ROUNDS):

        async def request() -> None:
            async with http_pool.get_connection() as client:
                assert (await client.get("/ok")).status_code == 200
                http_proxy.blackhole()
                await client.get("/ok")

        await timed("http request (black hole)", HTTPDeadlineExceededError, request)

        async def hanging() -> None:
            async with http_pool.get_connection() as client:
                await client.get("/hang")

        http_proxy.heal()
        await timed("http request (no answer)", HTTPDeadlineExceededError, hanging)

        async def lease() -> None:
            async with http_pool.get_connection() as client:
                await client.get("/ok")

        await refused_at_once(HTTPDeadlineExceededError, lease)
        async with http_pool.get_connection() as client:
            assert (await client.get("/ok")).status_code == 200
    stats = http_pool.get_stats_snapshot()
    assert stats["deadline_exceeded"] >= 3 * ROUNDS
    assert stats["http"]["upstream_failures"] == 0  # the caller's deadline is no outcome
    assert http_pool.circuit_breaker is not None and http_pool.circuit_breaker.state == "closed"
    assert http_pool.gate.in_use == 0
    report("http")


async def test_a_request_started_after_the_deadline_sends_nothing(
    http_pool: HTTPConnectionPool, upstream: Upstream
) -> None:
    upstream.reset_counts()
    with resync.deadline(0.05):
        async with http_pool.get_connection() as client:
            await asyncio.sleep(0.1)
            started = time.monotonic()
            with pytest.raises(HTTPDeadlineExceededError, match="before an upstream request"):
                await client.get("/ok")
            assert time.monotonic() - started < AT_ONCE
    assert upstream.requests == 0
