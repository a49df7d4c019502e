"""The engine of a database pool: ``NullPool`` plus the pool's event hooks.

:func:`create_engine` builds the ``AsyncEngine`` the pool's stock connects
through -- SQLAlchemy's own pool is ``NullPool``, the connections are kept by
:mod:`~resync.core.pools.database.stock` -- and installs its hooks:

- ``handle_error``: the pool's read-only handler (SQLSTATE 25006, see
  :mod:`~resync.core.pools.database.replacement`) and the statement-timeout
  translation of :mod:`~resync.core.pools.database.errors`;
- ``connect`` / ``close`` of the engine's pool: the pool's
  ``connection_creations`` / ``connection_closures`` counters;
- SQLite files: WAL mode on every new connection;
- asyncpg: TCP keepalive on every new connection's socket (idle 30 s, then
  every 10 s, 3 probes), so a connection whose server vanished without a
  FIN is found dead in about a minute, not the kernel's two hours.

:func:`ping_after` says how long a connection may sit idle before a checkout
pings it (for drivers whose ``BEGIN`` does not prove it alive).
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from resync.core.pools.database.errors import statement_error_hook
from resync.core.pools.database.url import DatabaseTarget, shared_memory_url
from resync.core.pools.kernel.stats import ConnectionPoolStats

__all__ = ["KEEPALIVE", "create_engine", "enable_keepalive", "ping_after"]


def _enable_wal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


#: TCP keepalive of database sockets: idle seconds, probe interval, probes.
KEEPALIVE = (30, 10, 3)


def enable_keepalive(sock: Any) -> None:
    """Turn TCP keepalive on for ``sock`` (a socket or asyncio's TransportSocket)."""
    idle, interval, count = KEEPALIVE
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", count),
    ):
        option = getattr(socket, name, None)  # not on every platform
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _keepalive_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # asyncpg offers no keepalive option (MagicStack/asyncpg#606); its
    # maintainers point at the transport's socket, which only the private
    # ``_transport`` reaches. Missing (a future asyncpg), nothing is set.
    driver = getattr(dbapi_connection, "driver_connection", None)
    transport = getattr(driver, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        enable_keepalive(sock)


def ping_after(
    target: DatabaseTarget | None, ping_idle_after: float, engine_options: Mapping[str, Any]
) -> float:
    """Seconds idle after which a checkout pings: 0 with ``pool_pre_ping``,
    never for SQLite (a local file does not drop connections), else
    ``ping_idle_after``."""
    if engine_options.get("pool_pre_ping"):
        return 0.0
    if target is not None and target.backend == "sqlite":
        return math.inf
    return ping_idle_after


def create_engine(
    target: DatabaseTarget,
    engine_kwargs: Mapping[str, Any],
    *,
    name: str,
    stats: ConnectionPoolStats,
    scrub: Callable[[object], str],
    on_driver_error: Callable[[ExceptionContext], None],
) -> AsyncEngine:
    """The engine of pool ``name`` for ``target``, hooks installed (no I/O).

    Raises SQLAlchemy's error for a driver that is missing or an argument it
    refuses (the pool's ``initialize()`` reports it as a setup error).
    """
    url = shared_memory_url(target) if target.is_memory else target.url
    # Bound parameters never enter SQLAlchemy's error text or its logs (a token or
    # personal data bound as a parameter would leak into every log line of an error).
    engine_kwargs = {"hide_parameters": True, **engine_kwargs}
    engine = create_async_engine(url, poolclass=NullPool, **engine_kwargs)

    def count_open(*_: Any) -> None:
        stats.connection_creations += 1

    def count_closed(*_: Any) -> None:
        stats.connection_closures += 1

    event.listen(engine.sync_engine, "handle_error", on_driver_error)
    event.listen(engine.sync_engine, "handle_error", statement_error_hook(name, scrub))
    event.listen(engine.sync_engine.pool, "connect", count_open)
    event.listen(engine.sync_engine.pool, "close", count_closed)
    if target.backend == "sqlite" and not target.is_memory:
        event.listen(engine.sync_engine.pool, "connect", _enable_wal)
    if target.driver == "asyncpg":
        event.listen(engine.sync_engine.pool, "connect", _keepalive_on_connect)
    return engine
