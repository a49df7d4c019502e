"""Priorities through the FastAPI dependency: a sheddable request is refused
(503 + Retry-After) while a default one queues; /pools shows the admission figures."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from resync.api import include_resync_routes, pool_lease, resync_lifespan
from resync.core.exceptions import InvalidPriorityError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.pool_manager import ConnectionPoolManager
from resync.settings import Settings
from resync.testing import InMemoryPool
from resync.testing.memory_pool import InMemoryConnection

Sheddable = Annotated[InMemoryConnection, pool_lease("workers", priority="sheddable")]
Default = Annotated[InMemoryConnection, pool_lease("workers")]


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


async def test_a_sheddable_request_is_refused_first_and_a_default_one_queues() -> None:
    settings = Settings(
        DATABASE_URL="sqlite+aiosqlite:///:memory:",
        DB_POOL_HEALTH_CHECK_INTERVAL=0,
        POOL_DRAIN_TIMEOUT=1,
    )
    manager = ConnectionPoolManager(settings)
    workers = InMemoryPool(
        ConnectionPoolConfig(
            pool_name="workers", min_size=0, max_size=1, max_waiting=1, health_check_interval=0
        )
    )
    await manager.register("workers", workers)
    app = FastAPI(lifespan=functools.partial(resync_lifespan, manager=manager))
    include_resync_routes(app)
    held = asyncio.Event()
    release = asyncio.Event()

    @app.get("/hold")
    async def hold(connection: Default) -> str:
        held.set()
        await release.wait()
        return "held"

    @app.get("/report")
    async def report(connection: Sheddable) -> str:
        return "report"

    @app.get("/order")
    async def order(connection: Default) -> str:
        return "order"

    async with served(app) as client:
        holder = asyncio.create_task(client.get("/hold"))
        await held.wait()
        # max_waiting=1: a sheddable caller queues only below 1 // 2 = 0 waiters.
        refused = await client.get("/report")
        queued = asyncio.create_task(client.get("/order"))
        while workers.gate.waiting == 0:
            await asyncio.sleep(0.001)
        release.set()
        assert (await holder).json() == "held"
        assert (await queued).json() == "order"
        pools = (await client.get("/pools")).json()["pools"]
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"] == "pool_overloaded"
    assert workers.stats.pool_overloads == 1
    admission = pools["workers"]["admission"]
    assert admission["refused"] == {"critical": 0, "default": 0, "sheddable": 1}
    assert admission["dropping"] is False and admission["adaptive"] is None


def test_a_bad_priority_fails_when_the_route_is_declared() -> None:
    with pytest.raises(InvalidPriorityError, match="Pool 'workers': priority must be"):
        pool_lease("workers", priority="low")  # type: ignore[arg-type]


async def test_every_database_lease_kind_takes_a_priority() -> None:
    from resync.core.pools.db_pool import DatabaseConnectionPool

    pool = DatabaseConnectionPool(
        ConnectionPoolConfig(pool_name="lite", min_size=0, max_size=1, max_waiting=2),
        "sqlite+aiosqlite:///:memory:",
    )
    await pool.initialize()
    try:
        async with pool.get_connection(priority="critical") as session:
            assert session is not None
        async with pool.connection(priority="sheddable") as conn:
            assert conn is not None
        async with pool.driver_connection(priority="default") as raw:
            assert raw is not None
        for lease in (pool.connection, pool.driver_connection, pool.get_connection):
            with pytest.raises(InvalidPriorityError, match="Pool 'lite'"):
                lease(priority="urgent")  # type: ignore[arg-type]
        assert pool.stats.pool_hits == 3
    finally:
        await pool.close()
