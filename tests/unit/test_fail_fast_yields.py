"""A lease refused at once (circuit open, overloaded) still lets the event loop run.

Found by the ledger fault test once every pool had a breaker: workers
retrying in a tight loop during an outage got their refusals without ever
suspending, starving every other task for seconds.
"""

from __future__ import annotations

import asyncio

import pytest

from resync.core.exceptions import BackendUnavailableError, PoolOverloadedError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.resilience import CircuitBreaker, CircuitBreakerConfig
from resync.testing import InMemoryPool


async def spin_while(refused: type[Exception], pool: InMemoryPool, attempts: int) -> int:
    """Retry ``attempts`` refused leases in a tight loop; count a bystander's ticks."""
    ticks = 0

    async def bystander() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    watcher = asyncio.ensure_future(bystander())
    await asyncio.sleep(0)
    for _ in range(attempts):
        with pytest.raises(refused):
            async with pool.get_connection():
                pass
    watcher.cancel()
    return ticks


async def test_an_open_breaker_refuses_at_once_but_yields() -> None:
    pool = InMemoryPool(ConnectionPoolConfig(pool_name="open", min_size=0, max_size=2))
    pool.circuit_breaker = CircuitBreaker(
        "open", CircuitBreakerConfig(failure_threshold=1, recovery_timeout=60)
    )
    async with pool:
        pool.circuit_breaker.record_failure()
        assert await spin_while(BackendUnavailableError, pool, 200) >= 150


async def test_an_overloaded_pool_sheds_at_once_but_yields() -> None:
    config = ConnectionPoolConfig(pool_name="full", min_size=0, max_size=1, max_waiting=1)
    async with InMemoryPool(config) as pool, pool.get_connection():
        queued = asyncio.ensure_future(pool.get_connection().__aenter__())
        await asyncio.sleep(0)
        try:
            assert await spin_while(PoolOverloadedError, pool, 200) >= 150
        finally:
            queued.cancel()
            await asyncio.gather(queued, return_exceptions=True)
