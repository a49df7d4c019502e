"""What opens a pool's default circuit breaker against real servers, and what never does.

Only the backend failing counts (a connect refused, a connection lost). Bad
SQL, a constraint violation, a WRONGTYPE reply, the caller's own timeout and
a cancelled lease leave the breaker closed, however many in a row.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from sqlalchemy import text

from resync.core.exceptions import (
    DatabaseError,
    DatabaseUnavailableError,
    RedisPoolError,
    RedisUnavailableError,
)
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.redis_pool import RedisConnectionPool
from resync.core.resilience import BreakerState

ROUNDS = 12  # more than the default failure_threshold (5)


def config(name: str) -> ConnectionPoolConfig:
    return ConnectionPoolConfig(pool_name=name, min_size=1, max_size=3, connection_timeout=1.0)


@pytest.mark.postgres
async def test_sql_errors_timeouts_and_cancellations_never_open_the_database_breaker(
    pg_url: str,
) -> None:
    table = f"breaker_{uuid.uuid4().hex[:10]}"
    async with DatabaseConnectionPool(config("pg-outcomes"), pg_url) as pool:
        breaker = pool.circuit_breaker
        assert breaker is not None
        async with pool.get_connection() as session:
            await session.execute(text(f"CREATE TABLE {table} (id int PRIMARY KEY)"))
            await session.execute(text(f"INSERT INTO {table} VALUES (1)"))
        try:
            for _ in range(ROUNDS):
                with pytest.raises(DatabaseError):
                    async with pool.get_connection() as session:
                        await session.execute(text("SELEC 1"))
                with pytest.raises(DatabaseError):
                    async with pool.get_connection() as session:
                        await session.execute(text(f"INSERT INTO {table} VALUES (1)"))
                with pytest.raises(TimeoutError):
                    async with pool.get_connection() as session:
                        async with asyncio.timeout(0.02):
                            await session.execute(text("SELECT pg_sleep(1)"))
                lease = asyncio.create_task(hold(pool))
                await asyncio.sleep(0.02)
                lease.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await lease
            assert breaker.state is BreakerState.CLOSED
            assert breaker.total_failures == 0
        finally:
            async with pool.get_connection() as session:
                await session.execute(text(f"DROP TABLE IF EXISTS {table}"))


async def hold(pool: DatabaseConnectionPool) -> None:
    async with pool.get_connection() as session:
        await session.execute(text("SELECT pg_sleep(1)"))


@pytest.mark.redis
async def test_wrongtype_replies_never_open_the_redis_breaker(redis_url: str) -> None:
    key = f"breaker:{uuid.uuid4().hex}"
    async with RedisConnectionPool(config("redis-outcomes"), redis_url) as pool:
        breaker = pool.circuit_breaker
        assert breaker is not None
        async with pool.get_connection() as client:
            await client.rpush(key, "x")
        try:
            for _ in range(ROUNDS):
                with pytest.raises(RedisPoolError):
                    async with pool.get_connection() as client:
                        await client.get(key)  # WRONGTYPE
                with pytest.raises(TimeoutError):
                    async with pool.get_connection() as client:
                        async with asyncio.timeout(0.01):
                            await client.blpop([f"{key}:empty"], timeout=1)
            assert breaker.state is BreakerState.CLOSED
            assert breaker.total_failures == 0
        finally:
            async with pool.get_connection() as client:
                await client.delete(key)


@pytest.mark.redis
async def test_an_open_redis_breaker_fails_leases_fast_then_a_probe_closes_it(
    redis_url: str,
) -> None:
    async with RedisConnectionPool(config("redis-open"), redis_url) as pool:
        breaker = pool.circuit_breaker
        assert breaker is not None
        for _ in range(breaker.config.failure_threshold):
            breaker.record_failure()
        started = time.perf_counter()
        with pytest.raises(RedisUnavailableError) as caught:
            async with pool.get_connection():
                pass
        assert time.perf_counter() - started < 0.01
        assert "circuit breaker is open" in str(caught.value)
        await asyncio.sleep(breaker.config.recovery_timeout + 0.05)
        async with pool.get_connection() as client:
            assert await client.ping() is True
        assert breaker.state is BreakerState.CLOSED


@pytest.mark.postgres
async def test_an_open_database_breaker_fails_leases_fast_and_closing_still_works(
    pg_url: str,
) -> None:
    pool = DatabaseConnectionPool(config("pg-open"), pg_url)
    await pool.initialize()
    breaker = pool.circuit_breaker
    assert breaker is not None
    for _ in range(breaker.config.failure_threshold):
        breaker.record_failure()
    with pytest.raises(DatabaseUnavailableError):
        async with pool.get_connection():
            pass
    await pool.close()
    from resync.core.exceptions import DatabasePoolClosedError

    with pytest.raises(DatabasePoolClosedError):
        async with pool.get_connection():
            pass
