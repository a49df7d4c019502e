"""No statement waits forever by default (issue 15.4).

Through a black-holed network a lease that was mid-query used to hang until
the pool was closed. ``DB_POOL_STATEMENT_TIMEOUT`` (default 30 s) now bounds
it: a request through the service gets 504 ``statement_timeout`` within the
bound, and every database socket has TCP keepalive on.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text

from resync.api import DBSession, include_resync_routes, resync_lifespan
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.database.pool import DEFAULT_STATEMENT_TIMEOUT
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.settings import Settings
from tests.faults.conftest import proxied_pg_url
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.postgres

BOUND = 1.0


async def test_a_request_mid_query_on_a_black_holed_network_gets_504_within_the_bound(
    pg_url: str, pg_proxy: FaultProxy
) -> None:
    settings = Settings(
        DATABASE_URL=proxied_pg_url(pg_url, pg_proxy),
        DB_POOL_MIN_SIZE=1,
        DB_POOL_STATEMENT_TIMEOUT=BOUND,
        DB_POOL_CONNECT_TIMEOUT=BOUND,
        DB_POOL_HEALTH_CHECK_INTERVAL=0,
        POOL_DRAIN_TIMEOUT=1,
    )
    app = FastAPI(lifespan=functools.partial(resync_lifespan, settings=settings))
    include_resync_routes(app)

    @app.get("/slow")
    async def slow(session: DBSession) -> int:
        await session.execute(text("SELECT pg_sleep(0.3)"))
        return 1

    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            assert (await client.get("/slow")).status_code == 200
            started = time.monotonic()
            request = asyncio.ensure_future(client.get("/slow"))
            await asyncio.sleep(0.1)
            pg_proxy.blackhole()  # mid-query: the reply never comes
            answer = await asyncio.wait_for(request, timeout=10)
            elapsed = time.monotonic() - started
            pg_proxy.heal()
    assert answer.status_code == 504, answer.text
    assert answer.json()["error"] == "statement_timeout"
    assert elapsed < BOUND + 0.5, elapsed


async def test_the_default_is_finite_and_every_socket_has_keepalive(pg_url: str) -> None:
    assert 0 < DEFAULT_STATEMENT_TIMEOUT < 3600
    config = ConnectionPoolConfig(pool_name="keepalive", min_size=1, max_size=2)
    async with DatabaseConnectionPool(config, pg_url) as pool, pool.get_connection() as session:
        raw = await (await session.connection()).get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        sock = driver._transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert driver._config.command_timeout == DEFAULT_STATEMENT_TIMEOUT
