"""Drain and resize for the HTTP pool, on the connections inside its httpx client.

httpx keeps its connections in an ``httpcore.AsyncConnectionPool`` and opens
them on demand, so these functions work on that pool (reached through the
transport, as the HTTP pool's stats already do) using httpcore's connection
interface (``is_idle``, ``is_closed``, ``aclose``):

- drain closes idle connections one at a time, spread over the interval; the
  next request opens a fresh one. A connection with a request in flight is
  left alone and closed as soon as it is idle again (the drain waits for
  that up to ``connection_timeout`` past the interval). Closing an idle
  connection is safe even if httpcore just picked it for a request: httpcore
  then sees it closed and assigns the request to another connection.
- resize changes httpcore's own limits (otherwise requests above the old
  ``max_connections`` would queue inside httpcore, or surplus connections
  would stay open) and closes idle connections above the new ``max_size``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from resync.core.pools.kernel.pacing import drain_pause

if TYPE_CHECKING:
    from resync.core.pools.http.pool import HTTPConnectionPool

__all__ = ["drain_http", "resize_http"]

logger = logging.getLogger("resync.pool.http")

_POLL = 0.05


def _core_pool(pool: HTTPConnectionPool) -> Any:
    """The httpcore pool under the client, or None (closed, or a custom transport)."""
    inner = getattr(pool._transport, "inner", None)
    core = getattr(inner, "_pool", None)
    return core if hasattr(core, "connections") else None


async def _close_if_idle(pool: HTTPConnectionPool, conn: Any) -> bool:
    """Close ``conn`` if no request uses it; True when it is closed now."""
    if conn.is_closed():
        return True
    if not conn.is_idle():
        return False
    try:
        await conn.aclose()
    except Exception as exc:  # it is gone either way
        logger.debug("pool '%s': closing a connection: %s", pool.name, pool._scrub(exc))
    pool.stats.connection_closures += 1
    return True


async def drain_http(pool: HTTPConnectionPool, interval: float | None) -> int:
    """Replace every open connection of ``pool``; return how many were open.

    Cancelled, it stops where it is; connections not closed yet stay in use
    (httpx still retires them by ``keepalive_expiry``).
    """
    core = _core_pool(pool)
    if core is None:
        return 0
    snapshot = [conn for conn in core.connections if not conn.is_closed()]
    pause = drain_pause(interval, len(snapshot))
    busy: list[Any] = []
    for conn in snapshot:
        if pool._shutdown:
            return len(snapshot)
        if not await _close_if_idle(pool, conn):
            busy.append(conn)
        busy = [c for c in busy if not await _close_if_idle(pool, c)]
        if pause:
            await asyncio.sleep(pause)
    deadline = time.monotonic() + pool.config.connection_timeout
    while busy and not pool._shutdown and time.monotonic() < deadline:
        await asyncio.sleep(_POLL)
        busy = [c for c in busy if not await _close_if_idle(pool, c)]
    if busy:
        logger.info(
            "pool '%s': %d connection(s) still busy after the drain; httpx retires them later",
            pool.name,
            len(busy),
        )
    return len(snapshot)


async def resize_http(pool: HTTPConnectionPool) -> None:
    """Apply ``pool.config.max_size`` to httpcore's limits; close idle surplus."""
    core = _core_pool(pool)
    if core is None:
        return
    cap = pool.config.max_size
    if not (hasattr(core, "_max_connections") and hasattr(core, "_max_keepalive_connections")):
        logger.warning("pool '%s': this httpcore has no limits to resize", pool.name)
        return
    limits = pool.client_kwargs.get("limits")
    keepalive = cap
    if limits is not None and limits.max_keepalive_connections is not None:
        keepalive = min(limits.max_keepalive_connections, cap)
    core._max_connections = cap
    core._max_keepalive_connections = keepalive
    open_now = [conn for conn in core.connections if not conn.is_closed()]
    surplus = len(open_now) - cap
    for conn in open_now:
        if surplus <= 0:
            break
        if await _close_if_idle(pool, conn):
            surplus -= 1
