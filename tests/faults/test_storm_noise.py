"""A cancellation storm logs nothing but resync's own lines (issue 15.9).

On the default asyncio loop, cancelling leases while their connections were
being opened used to leave asyncpg futures whose ``ConnectionError`` nobody
retrieved: asyncio logged 80-170 "Future exception was never retrieved" lines
per storm (279 in this scenario before the fix).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text

from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.redis_pool import RedisConnectionPool
from tests.faults.conftest import pg_backends

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def churning(name: str) -> ConnectionPoolConfig:
    # Connections expire at once, so nearly every lease opens one: the storm
    # cancels connects mid-handshake.
    return ConnectionPoolConfig(
        pool_name=name, min_size=0, max_size=20, max_lifetime=0.05, idle_timeout=0.01
    )


async def storm(use: Callable[[], Awaitable[None]], rounds: int = 15) -> None:
    for _ in range(rounds):
        tasks = [asyncio.ensure_future(use()) for _ in range(100)]
        await asyncio.sleep(random.uniform(0.001, 0.02))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def quiet_after(run: Callable[[], Awaitable[None]], caplog: Any) -> list[str]:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    await run()
    gc.collect()  # unretrieved futures are reported when collected
    await asyncio.sleep(0.3)
    gc.collect()
    return [r.getMessage() for r in caplog.records if r.name == "asyncio"]


async def test_a_database_storm_is_silent_and_leaves_no_connection(
    pg_url: str, pg_admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pool = DatabaseConnectionPool(churning("storm-db"), pg_url)

    async def use() -> None:
        async with pool.get_connection() as session:
            await session.execute(text("SELECT 1"))

    async def run() -> None:
        async with pool:
            await storm(use)

    noise = await quiet_after(run, caplog)
    assert noise == [], f"{len(noise)} asyncio lines, first: {noise[:1]}"
    await asyncio.sleep(1.5)  # abandoned connects end within connect timeout + 1 s
    assert await pg_backends(pg_admin, pool.application_name) == 0


async def test_a_redis_storm_is_silent(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    pool = RedisConnectionPool(churning("storm-redis"), redis_url)

    async def use() -> None:
        async with pool.get_connection() as client:
            await client.ping()

    async def run() -> None:
        async with pool:
            await storm(use)

    noise = await quiet_after(run, caplog)
    assert noise == [], f"{len(noise)} asyncio lines, first: {noise[:1]}"
