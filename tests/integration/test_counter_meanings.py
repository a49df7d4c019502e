"""One meaning for each counter on every backend (issue 15.3).

``connection_errors``: failures to open or keep a connection. ``server_errors``:
errors the server answered with. A mixed run per backend -- successes, answers
that are errors, connections lost or refused -- and the counters must equal
what the callers saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from resync.core.exceptions import (
    DatabaseConnectionLostError,
    DatabaseError,
    RedisPoolError,
    ResyncError,
    TWSConnectionError,
)
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.pools.redis_pool import RedisConnectionPool
from tests.helpers.redis_server import RedisServer
from tests.helpers.upstream import Upstream


def counts(pool: Any) -> tuple[int, int]:
    stats = pool.get_stats_snapshot()
    return stats["connection_errors"], stats["server_errors"]


@pytest.mark.postgres
async def test_database_counts_match_what_callers_saw(pg_url: str) -> None:
    config = ConnectionPoolConfig(pool_name="meanings-db", min_size=1, max_size=3)
    admin = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
    seen = {"lost": 0, "answered": 0, "ok": 0}
    try:
        async with DatabaseConnectionPool(config, pg_url, circuit_breaker=False) as pool:
            for sql in ("SELECT 1", "SELEC 1", "SELECT 1/0", "KILL") * 4:
                try:
                    async with pool.get_connection() as session:
                        if sql == "KILL":
                            pid_sql = text("SELECT pg_backend_pid()")
                            pid = (await session.execute(pid_sql)).scalar()
                            await admin.execute("SELECT pg_terminate_backend($1)", pid)
                            await session.execute(text("SELECT 1"))
                        else:
                            await session.execute(text(sql))
                except DatabaseConnectionLostError:
                    seen["lost"] += 1
                except DatabaseError:
                    seen["answered"] += 1
                else:
                    seen["ok"] += 1
            assert seen == {"ok": 4, "answered": 8, "lost": 4}, seen
            assert counts(pool) == (seen["lost"], seen["answered"])
    finally:
        await admin.close()


@pytest.mark.redis
async def test_redis_counts_match_what_callers_saw(tmp_path: Path) -> None:
    config = ConnectionPoolConfig(pool_name="meanings-redis", min_size=1, max_size=2)
    with RedisServer(tmp_path) as server:
        pool = RedisConnectionPool(config, server.url(), circuit_breaker=False)
        await pool.initialize()
        try:
            answered = 0
            async with pool.get_connection() as client:
                await client.set("k", "a string")
            for _ in range(3):
                with pytest.raises(RedisPoolError):  # WRONGTYPE: the server answered
                    async with pool.get_connection() as client:
                        await client.lpush("k", "x")
                answered += 1
            assert counts(pool) == (0, answered)
            server.stop()
            refused = 0
            for _ in range(3):
                with pytest.raises(ResyncError):
                    async with pool.get_connection() as client:
                        await client.ping()
                refused += 1
            assert counts(pool) == (refused, answered)
        finally:
            await pool.close()


async def test_http_counts_match_what_callers_saw() -> None:
    config = ConnectionPoolConfig(pool_name="meanings-http", min_size=0, max_size=2)
    with Upstream() as upstream:
        pool = HTTPConnectionPool(config, upstream.url, circuit_breaker=False)
        await pool.initialize()
        try:
            for _ in range(3):
                async with pool.get_connection() as client:
                    assert (await client.get("/status/503")).status_code == 503
            assert counts(pool) == (0, 3)
            upstream.stop()
            for _ in range(2):
                with pytest.raises(TWSConnectionError):
                    async with pool.get_connection() as client:
                        await client.get("/ok")
            assert counts(pool) == (2, 3)
        finally:
            await pool.close()
