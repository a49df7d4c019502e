"""A server outage behind the fault proxy: callers fail fast, connects are spaced.

Issue "step 11". Many callers loop leases on one pool while its server is
unreachable for :data:`OUTAGE` seconds, either refusing connections (the
proxy stops listening: ECONNREFUSED) or resetting them (the proxy accepts,
finds no server and sends RST). Every open connection is reset when the
outage begins. The scenario checks, for PostgreSQL and for Redis:

- **connects are spaced**: the pool's connect attempts during the outage --
  counted at the driver (``asyncpg.connect``, redis-py's ``_connect``: every
  socket it tries, the proxy's ``accepted`` too where it sees them) -- stay
  within what was in flight when the server went away plus a couple per
  ``recovery_timeout`` window; without a breaker every lease and every
  maintenance round connects (``before`` below);
- **callers fail fast**: once the breaker is open, a failing lease returns
  within :data:`FAST` seconds with the family's ``*UnavailableError``;
- **recovery by itself**: after the outage a lease succeeds within
  ``recovery_timeout + 1 s`` and then every caller's leases succeed again.

The figures (connect attempts, failing leases, the slowest fast failure,
recovery time) are printed, run with ``-s`` to see them.
"""

from __future__ import annotations

import asyncio
import gc
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import asyncpg
import pytest
from redis.asyncio.connection import Connection as RedisDriverConnection
from sqlalchemy import text

from resync.core.exceptions import (
    BackendUnavailableError,
    DatabaseUnavailableError,
    RedisUnavailableError,
    ResyncError,
)
from resync.core.pools.base_pool import ConnectionPool, ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.redis_pool import RedisConnectionPool
from tests.faults.conftest import proxied_pg_url
from tests.faults.proxy import FaultProxy

#: Seconds the server is unreachable.
OUTAGE = 3.0
#: A lease refused by an open breaker returns within this many seconds.
FAST = 0.1
#: Each pool's connect (and statement) timeout.
T = 1.0
#: A caller waits this long after a failed lease before its next one.
PAUSE = 0.005

Body = Callable[[Any], Awaitable[object]]


def dead_port() -> int:
    """A local port nothing listens on (connects to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Lease:
    started: float
    elapsed: float
    #: The error's class (not the error: 20,000 tracebacks would make the
    #: garbage collector, not the pool, the slowest part of a lease).
    error: type[ResyncError] | None


@dataclass
class Outcome:
    """What the callers saw; times are seconds since the outage began."""

    leases: list[Lease] = field(default_factory=list)
    attempts_before: int = 0
    attempts_during: int = 0
    accepted_during: int = 0
    healed_at: float = 0.0
    first_success: float | None = None
    all_recovered: float | None = None

    def failures(self, after: float, before: float) -> list[Lease]:
        return [
            lease
            for lease in self.leases
            if lease.error is not None and after <= lease.started < before
        ]


class ConnectCounter:
    """Counts calls of a patched connect function."""

    def __init__(self) -> None:
        self.calls = 0


async def outage(
    pool: ConnectionPool[Any],
    body: Body,
    proxy: FaultProxy,
    counter: ConnectCounter,
    *,
    callers: int,
    mode: str,
) -> Outcome:
    """Run ``callers`` looping leases through warm-up, an outage and recovery."""
    out = Outcome()
    stop = asyncio.Event()
    recovered: set[int] = set()
    origin = 0.0
    healed = False

    async def caller(number: int) -> None:
        while not stop.is_set():
            started = perf_counter()
            try:
                async with pool.get_connection() as conn:
                    await body(conn)
            except ResyncError as exc:
                elapsed = perf_counter() - started
                out.leases.append(Lease(started - origin, elapsed, type(exc)))
                del exc
                await asyncio.sleep(PAUSE)
                continue
            now = perf_counter() - origin
            out.leases.append(Lease(started - origin, perf_counter() - started, None))
            if healed:
                if out.first_success is None:
                    out.first_success = now - out.healed_at
                recovered.add(number)
                if len(recovered) == callers and out.all_recovered is None:
                    out.all_recovered = now - out.healed_at
            await asyncio.sleep(0)

    origin = perf_counter() + 3600  # warm-up leases have negative times
    tasks = [asyncio.create_task(caller(n)) for n in range(callers)]
    await asyncio.sleep(0.5)
    assert not [lease for lease in out.leases if lease.error], "the warm-up failed"
    before_calls, before_accepted = counter.calls, proxy.accepted
    out.attempts_before = before_calls
    target = proxy.target
    origin = perf_counter()
    if mode == "refuse":
        proxy.refuse_new()
    else:
        proxy.set_target("127.0.0.1", dead_port())
    proxy.reset_all()
    # A refused lease never suspends, so only a collection of the test's own
    # 20,000 records could stall one: the collector waits until the outage ends.
    gc.disable()
    try:
        await asyncio.sleep(OUTAGE)
    finally:
        gc.enable()
    out.attempts_during = counter.calls - before_calls
    out.accepted_during = proxy.accepted - before_accepted
    proxy.set_target(*target)
    out.healed_at = perf_counter() - origin
    proxy.heal()
    healed = True
    deadline = perf_counter() + 10.0
    while out.all_recovered is None and perf_counter() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks)
    return out


def report(name: str, pool: ConnectionPool[Any], out: Outcome, mode: str) -> None:
    failed = out.failures(0.0, out.healed_at)
    fast = [lease for lease in failed if issubclass_(lease.error, BackendUnavailableError)]
    slowest = max((lease.elapsed for lease in fast), default=0.0)
    breaker = pool.circuit_breaker
    print(
        f"\n[{name}/{mode}] connect attempts during the {OUTAGE:g}s outage: "
        f"{out.attempts_during} (proxy accepted {out.accepted_during}); failed leases "
        f"{len(failed)}, of them unavailable (fast) {len(fast)}, slowest fast "
        f"{slowest:.4f}s; first success {out.first_success}s, every caller "
        f"{out.all_recovered}s after the outage; breaker "
        f"{breaker.snapshot() if breaker is not None else None}"
    )


def issubclass_(error: type[ResyncError] | None, kind: type[ResyncError]) -> bool:
    return error is not None and issubclass(error, kind)


def check(
    pool: ConnectionPool[Any],
    out: Outcome,
    *,
    unavailable: type[BackendUnavailableError],
    in_flight: int,
    per_connect: int = 1,
) -> None:
    breaker = pool.circuit_breaker
    assert breaker is not None, "the pool has no circuit breaker by default"
    recovery = breaker.config.recovery_timeout
    windows = math.ceil(OUTAGE / recovery) + 1
    # What was in flight when the server went away (``in_flight`` attempts:
    # max_size leases and a refill, with the driver's retries), the failures
    # that open the breaker, then a probe or two (a lease's, a refill's) per
    # window; ``per_connect`` sockets for each connect.
    bound = in_flight + per_connect * (breaker.config.failure_threshold + 2 * windows)
    assert out.attempts_during <= bound, (out.attempts_during, bound)
    # Once open (the in-flight connects fail within T): the failures are fast.
    late = out.failures(T + 0.2, out.healed_at)
    assert late, "no lease failed during the outage"
    typed = [lease for lease in late if issubclass_(lease.error, unavailable)]
    assert len(typed) >= len(late) - 2 * windows, (len(typed), len(late))
    assert max(lease.elapsed for lease in typed) <= FAST
    assert out.first_success is not None and out.first_success <= recovery + 1.0
    assert out.all_recovered is not None and out.all_recovered <= recovery + 1.5
    assert breaker.state.value == "closed"


# --- PostgreSQL ------------------------------------------------------------------


@pytest.fixture
def pg_connects(monkeypatch: pytest.MonkeyPatch) -> ConnectCounter:
    """Counts asyncpg connects (SQLAlchemy's dialect calls ``asyncpg.connect``)."""
    counter = ConnectCounter()
    real = asyncpg.connect

    async def counting(*args: Any, **kwargs: Any) -> Any:
        counter.calls += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncpg, "connect", counting)
    return counter


@pytest.fixture
async def pg_pool(pg_url: str, pg_proxy: FaultProxy) -> AsyncIterator[DatabaseConnectionPool]:
    config = ConnectionPoolConfig(
        pool_name="breaker-db",
        min_size=2,
        max_size=10,
        connection_timeout=T,
        # Maintenance (the min_size refill) every 0.1 s: at work during the outage.
        idle_timeout=0.4,
        drain_timeout=2.0,
    )
    # No circuit_breaker argument: the default must protect the server.
    pool = DatabaseConnectionPool(
        config, proxied_pg_url(pg_url, pg_proxy), connect_args={"command_timeout": T}
    )
    await pool.initialize()
    yield pool
    pg_proxy.heal()
    await pool.close()


async def select_one(session: Any) -> object:
    return (await session.execute(text("SELECT 1"))).scalar_one()


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["refuse", "reset"])
async def test_postgres_outage_fails_fast_and_spaces_connects(
    pg_pool: DatabaseConnectionPool,
    pg_proxy: FaultProxy,
    pg_connects: ConnectCounter,
    mode: str,
) -> None:
    out = await outage(pg_pool, select_one, pg_proxy, pg_connects, callers=50, mode=mode)
    report("postgres", pg_pool, out, mode)
    # In flight: 10 leases and a refill, one connect each.
    check(pg_pool, out, unavailable=DatabaseUnavailableError, in_flight=11)


# --- Redis -------------------------------------------------------------------------


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[FaultProxy]:
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    with FaultProxy((parts.hostname or "127.0.0.1", parts.port or 6379)) as proxy:
        yield proxy


@pytest.fixture
def redis_connects(monkeypatch: pytest.MonkeyPatch) -> ConnectCounter:
    """Counts redis-py socket connects (each retry of a connect included)."""
    counter = ConnectCounter()
    real = RedisDriverConnection._connect

    async def counting(self: RedisDriverConnection) -> None:
        counter.calls += 1
        await real(self)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(RedisDriverConnection, "_connect", counting)
    return counter


@pytest.fixture
async def redis_pool(redis_url: str, redis_proxy: FaultProxy) -> AsyncIterator[RedisConnectionPool]:
    from urllib.parse import urlsplit

    db = urlsplit(redis_url).path or "/0"
    config = ConnectionPoolConfig(
        pool_name="breaker-redis",
        min_size=2,
        max_size=5,
        connection_timeout=T,
        idle_timeout=0.4,
        drain_timeout=2.0,
    )
    pool = RedisConnectionPool(config, f"redis://{redis_proxy.host}:{redis_proxy.port}{db}")
    await pool.initialize()
    yield pool
    redis_proxy.heal()
    await pool.close()


async def ping(client: Any) -> object:
    return await client.ping()


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["refuse", "reset"])
async def test_redis_outage_fails_fast_and_spaces_connects(
    redis_pool: RedisConnectionPool,
    redis_proxy: FaultProxy,
    redis_connects: ConnectCounter,
    mode: str,
) -> None:
    out = await outage(redis_pool, ping, redis_proxy, redis_connects, callers=10, mode=mode)
    report("redis", redis_pool, out, mode)
    # redis-py retries a failed connect twice (the pool's Retry): three sockets
    # per connect; a command on a connection reset under it reconnects twice
    # more: nine sockets for each of the 5 leases in flight, three for a refill.
    check(
        redis_pool,
        out,
        unavailable=RedisUnavailableError,
        in_flight=9 * 5 + 3,
        per_connect=3,
    )
