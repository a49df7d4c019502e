"""Redis and HTTP: bare redis-py and httpx beside resync's pools over them.

- Redis: ``GET`` / ``SET`` of a 64-byte value through a bare
  ``redis.asyncio.BlockingConnectionPool(max_connections=10, timeout=30)``
  vs ``async with pool.get_connection() as r`` on a ``RedisConnectionPool``
  (``max_size=10``), with the same driver options on both sides. Lease alone:
  the driver pool's ``get_connection()`` / ``release()`` vs a resync lease.
- HTTP: ``GET /ok`` through a bare ``httpx.AsyncClient(Limits(10, 10))`` vs a
  lease of an ``HTTPConnectionPool`` (``max_size=10``), against the test
  upstream (``tests/helpers/upstream.py``) running in its own process.

Connections open on demand on both sides (``min_size=1``): ten idle
keep-alive connections would cost httpx a readability check each per request
at concurrency 1, a cost of httpcore, not of the pool.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from benchmarks.harness import Op, Row, compare, settle
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.pools.redis_pool import RedisConnectionPool
from tests.helpers.net import free_port, wait_for_port

__all__ = ["PLAN", "run_http", "run_redis"]

REDIS_URL = os.environ.get("RESYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
MAX_SIZE = 10
TIMEOUT = 30.0
KEY = "resync:bench:suite"
VALUE = "x" * 64
ROOT = Path(__file__).resolve().parent.parent
# Identical driver options on both sides, so only the pools differ.
REDIS_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_timeout": TIMEOUT,
    "socket_connect_timeout": TIMEOUT,
}

REDIS_PLAN: list[tuple[str, tuple[str, ...]]] = [
    ("redis GET", ("redis-py", "resync")),
    ("redis SET", ("redis-py", "resync")),
    ("lease: redis", ("redis-py", "resync")),
]
HTTP_PLAN: list[tuple[str, tuple[str, ...]]] = [("http GET", ("httpx", "resync"))]
PLAN = REDIS_PLAN + HTTP_PLAN


def _config(name: str) -> ConnectionPoolConfig:
    return ConnectionPoolConfig(
        pool_name=name, min_size=1, max_size=MAX_SIZE, connection_timeout=TIMEOUT
    )


async def run_redis(loop: str, rounds: int, duration: float) -> list[Row]:
    """Redis ``GET``, ``SET`` and the lease alone, redis-py vs resync."""
    driver = aioredis.BlockingConnectionPool.from_url(
        REDIS_URL, max_connections=MAX_SIZE, timeout=TIMEOUT, **REDIS_OPTIONS
    )
    bare = aioredis.Redis(connection_pool=driver)
    pool = RedisConnectionPool(_config("bench-redis"), REDIS_URL, **REDIS_OPTIONS)
    await pool.initialize()
    await bare.set(KEY, VALUE)
    yield_once = asyncio.sleep

    async def resync_get() -> object:
        async with pool.get_connection() as client:
            return await client.get(KEY)

    async def resync_set() -> object:
        async with pool.get_connection() as client:
            return await client.set(KEY, VALUE)

    async def bare_lease() -> None:
        conn = await driver.get_connection()  # type: ignore[no-untyped-call]
        try:
            await yield_once(0)
        finally:
            await driver.release(conn)

    async def resync_lease() -> None:
        async with pool.get_connection():
            await yield_once(0)

    workloads: list[tuple[str, dict[str, Op]]] = [
        ("redis GET", {"redis-py": lambda: bare.get(KEY), "resync": resync_get}),
        ("redis SET", {"redis-py": lambda: bare.set(KEY, VALUE), "resync": resync_set}),
        ("lease: redis", {"redis-py": bare_lease, "resync": resync_lease}),
    ]
    settle()
    rows: list[Row] = []
    try:
        for workload, ops in workloads:
            lease = workload.startswith("lease")
            rows += await compare(
                "lease" if lease else "redis",
                workload,
                ops,
                loop=loop,
                rounds=rounds,
                duration=duration / 2 if lease else duration,
                pairs={"resync": "redis-py"},
            )
    finally:
        await bare.delete(KEY)
        await bare.aclose()
        await driver.aclose()
        await pool.close()
    return rows


def start_upstream() -> tuple[subprocess.Popen[bytes], str]:
    """The test upstream in its own process (its own interpreter and loop)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.upstream", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return proc, f"http://127.0.0.1:{port}"


async def run_http(loop: str, rounds: int, duration: float) -> list[Row]:
    """``GET /ok`` against a local upstream process, httpx vs resync."""
    proc, base_url = start_upstream()
    bare = httpx.AsyncClient(
        base_url=base_url,
        limits=httpx.Limits(max_connections=MAX_SIZE, max_keepalive_connections=MAX_SIZE),
        timeout=httpx.Timeout(TIMEOUT),
    )
    pool = HTTPConnectionPool(_config("bench-http"), base_url)
    await pool.initialize()

    async def bare_get() -> object:
        return (await bare.get("/ok")).status_code

    async def resync_get() -> object:
        async with pool.get_connection() as client:
            return (await client.get("/ok")).status_code

    settle()
    try:
        return await compare(
            "http",
            "http GET",
            {"httpx": bare_get, "resync": resync_get},
            loop=loop,
            rounds=rounds,
            duration=duration,
            pairs={"resync": "httpx"},
        )
    finally:
        await bare.aclose()
        await pool.close()
        proc.terminate()
        proc.wait()
