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

and, for any other pool of the manager (a second database from settings, a
pool given to ``manager.register(...)``), :func:`pool_lease`::

    Reports = Annotated[AsyncSession, pool_lease("reports")]

A lease can say how important it is under overload (``critical``,
``default``, ``sheddable``: who is refused first when the pool sheds load,
never the order of service; see ``ConnectionPool.get_connection``)::

    Report = Annotated[AsyncSession, pool_lease("database", priority="sheddable")]

or :func:`pool_dependency`, which builds that ``Annotated`` type for you
(``Reports = pool_dependency("reports", AsyncSession)``; mypy resolves it as
``AsyncSession`` when written in an annotation through ``Annotated`` as above,
so prefer ``pool_lease`` in code checked by mypy).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeVar

import httpx
from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from resync.api.errors import SETUP_HINTS
from resync.core.exceptions import ManagerError, PoolNotFoundError
from resync.core.pools.kernel.admission import DEFAULT, Priority, PriorityName, parse_priority
from resync.core.pools.kernel.state import PoolState
from resync.core.pools.manager.health import HealthState
from resync.core.pools.manager.specs import DATABASE_POOL, HTTP_POOL, REDIS_POOL
from resync.core.pools.pool_manager import ConnectionPoolManager

T = TypeVar("T")

logger = logging.getLogger("resync.api")

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
    "pool_dependency",
    "pool_lease",
]


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
        hint = SETUP_HINTS.get(name, "register it")
        raise PoolNotFoundError(
            f"pool '{name}' is not configured in this service: {hint}",
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


def _usable(manager: ConnectionPoolManager, name: str) -> bool:
    """Is pool ``name`` configured, open, not known down and its breaker not open?"""
    pool = manager.pools.get(name)
    if pool is None or pool.state is not PoolState.READY:
        return False
    health = manager.health.get(name)
    if health is not None and health.state is HealthState.DOWN:
        return False
    breaker = pool.circuit_breaker
    # retry_after() reads the breaker without spending a half-open probe.
    return breaker is None or breaker.retry_after() == 0


async def get_optional_redis(manager: Manager) -> AsyncIterator[Redis | None]:
    """Like :func:`get_redis`, but None when Redis cannot serve this request.

    None when Redis is not configured, not open yet (an optional pool that
    could not open at start keeps retrying in the background), known down by
    the health checks, its circuit breaker is open, or the lease itself fails
    (timeout, connection refused): the route decides what to do without Redis,
    and the dependency never turns a cache outage into a 500. Errors raised by
    commands the route sends are the route's to catch (``RedisPoolError``).
    """
    if not _usable(manager, REDIS_POOL):
        yield None
        return
    lease = manager.pool(REDIS_POOL).get_connection()
    try:
        client = await lease.__aenter__()
    except Exception as exc:
        logger.warning("optional redis unavailable for this request: %s", type(exc).__name__)
        yield None
        return
    try:
        yield client
    except BaseException as exc:
        await lease.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    await lease.__aexit__(None, None, None)


async def get_http_client(manager: Manager) -> AsyncIterator[httpx.AsyncClient]:
    """The upstream API client, leased for this request (503 if TWS_BASE_URL is unset)."""
    async with _pool(manager, HTTP_POOL).get_connection() as client:
        yield client


def pool_lease(name: str, priority: Priority | PriorityName = DEFAULT) -> Any:
    """``Depends`` leasing from the manager's pool ``name`` for one request.

    Use as ``Annotated[AsyncSession, pool_lease("reports")]``. The lease is the
    pool's ``get_connection(priority=priority)``: it ends (commit/rollback/
    return) before the response is sent, a lease error answers 503 per the
    error contract (an overloaded pool with ``Retry-After``), and an unknown
    name answers 503 ``pool_not_configured`` naming the pool. ``priority``
    is checked here, when the route is declared: anything but ``critical``,
    ``default`` or ``sheddable`` raises ``InvalidPriorityError``.
    """
    chosen = parse_priority(priority, name)

    async def lease(manager: Manager) -> AsyncIterator[Any]:
        async with _pool(manager, name).get_connection(priority=chosen) as connection:
            yield connection

    lease.__name__ = f"lease_{name}" if chosen is DEFAULT else f"lease_{name}_{chosen.value}"
    return Depends(lease, scope="function")


def pool_dependency(name: str, kind: type[T], priority: Priority | PriorityName = DEFAULT) -> Any:
    """``Annotated[kind, pool_lease(name, priority)]``: a ready-made parameter type.

    ``Reports = pool_dependency("reports", AsyncSession)``; then
    ``async def route(db: Reports)``. ``kind`` is the type the pool leases
    (``AsyncSession``, ``Redis``, ``httpx.AsyncClient``, your resource type).
    """
    return Annotated[kind, pool_lease(name, priority)]


DBSession = Annotated[AsyncSession, Depends(get_db_session, scope="function")]
DBReadSession = Annotated[AsyncSession, Depends(get_db_read_session, scope="function")]
RedisClient = Annotated[Redis, Depends(get_redis, scope="function")]
OptionalRedis = Annotated[Redis | None, Depends(get_optional_redis, scope="function")]
HTTPClient = Annotated[httpx.AsyncClient, Depends(get_http_client, scope="function")]
