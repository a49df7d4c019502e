"""The HTTP pool against an upstream that is down, slow, or answering 500.

The upstream (:mod:`tests.helpers.upstream`, its own thread) is reached
through a fault proxy. ``connection_timeout`` (also httpx's timeout) is
``T``; the circuit breaker opens after three failures and probes again after
half a second, so a healed upstream is served again well within 2 s. Every
lease POSTs a token to ``/echo`` and checks the answer carries it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from resync.core.exceptions import (
    HTTPConnectError,
    HTTPStatusError,
    HTTPTimeoutError,
    HTTPUnavailableError,
    TWSConnectionError,
)
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.resilience import CircuitBreakerConfig
from tests.faults.proxy import FaultProxy
from tests.faults.survival import Survival, token
from tests.helpers.upstream import Upstream

T = 1.0
MakePool = Callable[..., Awaitable[HTTPConnectionPool]]


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as running:
        yield running


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", upstream.port)) as running:
        yield running


@pytest.fixture
async def make_pool(proxy: FaultProxy) -> AsyncIterator[MakePool]:
    pools: list[HTTPConnectionPool] = []

    async def make(**config: Any) -> HTTPConnectionPool:
        values: dict[str, Any] = {
            "pool_name": "faulty-http",
            "min_size": 2,
            "max_size": 4,
            "connection_timeout": T,
            "drain_timeout": 2.0,
        }
        values.update(config)
        pool = HTTPConnectionPool(
            ConnectionPoolConfig(**values),
            f"http://{proxy.host}:{proxy.port}",
            health_path="/ok",
            circuit_breaker=CircuitBreakerConfig(failure_threshold=3, recovery_timeout=0.5),
        )
        pools.append(pool)
        await pool.initialize()
        return pool

    yield make
    proxy.heal()
    for pool in pools:
        await pool.close()


async def echo(client: httpx.AsyncClient) -> str:
    """POST a token of this lease; the answer must carry exactly it."""
    value = token()
    response = await client.post("/echo", content=value)
    response.raise_for_status()
    assert response.text == f"POST {value}", f"a reply for another caller: {response.text!r}"
    return value


async def assert_nothing_leaked(pool: HTTPConnectionPool, proxy: FaultProxy) -> None:
    """Rule 2 for HTTP: no slot held, the proxy sees at most max_size connections
    from the pool, and none after close."""
    proxy.heal()
    assert pool._gate.in_use == 0
    assert proxy.client_sockets <= pool.config.max_size
    await pool.close()
    await proxy.wait_for_sockets_async(0)


def all_typed(attempts: list[Any], *kinds: type[BaseException]) -> bool:
    return all(isinstance(a.error, kinds) for a in attempts)


async def test_upstream_down_fails_fast_and_typed_then_recovers(
    make_pool: MakePool, proxy: FaultProxy
) -> None:
    pool = await make_pool()
    survival = Survival(pool)
    assert (await survival.lease(echo)).ok
    proxy.close_all()
    proxy.refuse_new()
    attempts = [await survival.lease(echo) for _ in range(6)]
    # Refused connections (retried, then reported), then the open breaker.
    assert all_typed(attempts, HTTPConnectError, HTTPUnavailableError), attempts
    assert isinstance(attempts[-1].error, HTTPUnavailableError)
    proxy.heal()
    await survival.recovers(echo)
    assert all(a.ok for a in await survival.leases(8, echo))
    await assert_nothing_leaked(pool, proxy)


async def test_slow_upstream_times_out_typed_then_recovers(
    make_pool: MakePool, proxy: FaultProxy
) -> None:
    pool = await make_pool()
    survival = Survival(pool)
    proxy.set_latency(to_client=T * 1.5)
    attempts = await survival.leases(2, echo)
    assert all_typed(attempts, HTTPTimeoutError), attempts
    proxy.heal()
    await survival.recovers(echo)
    await assert_nothing_leaked(pool, proxy)


async def test_connect_that_never_answers_times_out_typed(
    make_pool: MakePool, proxy: FaultProxy
) -> None:
    pool = await make_pool()
    survival = Survival(pool)
    proxy.hang_new()
    proxy.close_all()  # the kept-alive connections go; new ones hang
    attempts = await survival.leases(2, echo)
    assert all_typed(attempts, TWSConnectionError), attempts
    proxy.heal()
    await survival.recovers(echo)
    await assert_nothing_leaked(pool, proxy)


async def test_blackhole_during_a_request_times_out_typed(
    make_pool: MakePool, proxy: FaultProxy
) -> None:
    pool = await make_pool()
    survival = Survival(pool)
    proxy.blackhole()
    attempts = await survival.leases(3, echo)
    assert all_typed(attempts, HTTPTimeoutError), attempts
    proxy.heal()
    await survival.recovers(echo)
    await assert_nothing_leaked(pool, proxy)


async def test_upstream_answering_500_trips_the_breaker_then_recovers(
    make_pool: MakePool, upstream: Upstream, proxy: FaultProxy
) -> None:
    pool = await make_pool()
    survival = Survival(pool)
    upstream.failing = True
    attempts = [await survival.lease(echo) for _ in range(5)]
    assert all_typed(attempts[:3], HTTPStatusError), attempts
    assert all_typed(attempts[3:], HTTPUnavailableError), attempts
    sent = upstream.requests
    assert isinstance((await survival.lease(echo)).error, HTTPUnavailableError)
    assert upstream.requests == sent  # open: nothing reaches the failing upstream
    upstream.failing = False
    await survival.recovers(echo)
    await assert_nothing_leaked(pool, proxy)


async def test_resets_under_concurrent_load_never_cross_replies(
    make_pool: MakePool, proxy: FaultProxy
) -> None:
    pool = await make_pool()
    survival = Survival(pool)
    stop = asyncio.Event()

    async def chaos() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.15)
            proxy.reset_all()

    async def worker() -> int:
        served = 0
        while not stop.is_set():
            attempt = await survival.lease(echo)
            served += attempt.ok
            if not attempt.ok:
                # Back off as a real client would: an open breaker fails a lease
                # without suspending, and a loop of those would starve the loop.
                await asyncio.sleep(0.01)
        return served

    injector = asyncio.create_task(chaos())
    workers = [asyncio.create_task(worker()) for _ in range(8)]
    await asyncio.sleep(2)
    stop.set()
    served = sum(await asyncio.gather(*workers))
    await injector
    assert served > 50
    proxy.heal()
    await survival.recovers(echo)
    await assert_nothing_leaked(pool, proxy)
