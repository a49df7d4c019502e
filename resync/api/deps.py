"""FastAPI dependencies that lease a connection per request.

Each dependency leases from the manager's pool for the duration of the path
operation and returns the connection before the response is sent
(``scope="function"``), so a failing commit becomes the response instead of
being lost after a 200 went out. Errors while leasing (timeout, overload,
open circuit, pool not configured) become 503 answers through the handlers in
:mod:`resync.api.errors`.

Use the annotated aliases::

    @app.get("/items")
    async def items(session: DBSession) -> list[str]: ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from resync.core.exceptions import ManagerError, PoolNotFoundError
from resync.core.pools.manager.specs import DATABASE_POOL, HTTP_POOL, REDIS_POOL
from resync.core.pools.pool_manager import ConnectionPoolManager

__all__ = [
    "DBReadSession",
    "DBSession",
    "HTTPClient",
    "Manager",
    "OptionalRedis",
    "RedisClient",
    "get_db_read_session",
    "get_db_session",
    "get_http_client",
    "get_manager",
    "get_optional_redis",
    "get_redis",
]

_HINTS = {
    DATABASE_POOL: "set DATABASE_URL",
    REDIS_POOL: "set REDIS_URL (and REDIS_POOL_MIN_SIZE > 0)",
    HTTP_POOL: "set TWS_BASE_URL",
}


def get_manager(request: Request) -> ConnectionPoolManager:
    """The manager the app's lifespan opened (503 if the app is not started)."""
    manager = getattr(request.app.state, "resync_manager", None)
    if not isinstance(manager, ConnectionPoolManager):
        raise ManagerError("the resync pool manager is not running in this app (lifespan not run)")
    return manager


Manager = Annotated[ConnectionPoolManager, Depends(get_manager)]


def _pool(manager: ConnectionPoolManager, name: str) -> Any:
    try:
        return manager.pool(name)
    except PoolNotFoundError:
        raise PoolNotFoundError(
            f"pool '{name}' is not configured in this service: {_HINTS.get(name, 'register it')}",
            pool_name=name,
        ) from None


async def get_db_session(manager: Manager) -> AsyncIterator[AsyncSession]:
    """A session on its own connection; committed if the operation returns, else rolled back."""
    async with _pool(manager, DATABASE_POOL).get_connection() as session:
        yield session


async def get_db_read_session(manager: Manager) -> AsyncIterator[AsyncSession]:
    """A session for reads: on a healthy read replica (``DATABASE_REPLICA_URLS``),
    else on the primary. Use :data:`DBSession` for anything that writes."""
    pool = _pool(manager, DATABASE_POOL)
    read_session = getattr(pool, "get_read_session", None)
    lease = read_session() if read_session is not None else pool.get_connection()
    async with lease as session:
        yield session


async def get_redis(manager: Manager) -> AsyncIterator[Redis]:
    """A Redis client bound to one connection for this request (503 if Redis is off)."""
    async with _pool(manager, REDIS_POOL).get_connection() as client:
        yield client


async def get_optional_redis(manager: Manager) -> AsyncIterator[Redis | None]:
    """Like :func:`get_redis`, but None when Redis is not configured."""
    if REDIS_POOL not in manager.pools:
        yield None
        return
    async with manager.pool(REDIS_POOL).get_connection() as client:
        yield client


async def get_http_client(manager: Manager) -> AsyncIterator[httpx.AsyncClient]:
    """The upstream API client, leased for this request (503 if TWS_BASE_URL is unset)."""
    async with _pool(manager, HTTP_POOL).get_connection() as client:
        yield client


DBSession = Annotated[AsyncSession, Depends(get_db_session, scope="function")]
DBReadSession = Annotated[AsyncSession, Depends(get_db_read_session, scope="function")]
RedisClient = Annotated[Redis, Depends(get_redis, scope="function")]
OptionalRedis = Annotated[Redis | None, Depends(get_optional_redis, scope="function")]
HTTPClient = Annotated[httpx.AsyncClient, Depends(get_http_client, scope="function")]
