"""Give back the connection slots that cancelled requests leave in httpcore's pool.

httpcore 1.0 (encode/httpcore#1093, also #658 and #830) loses a slot when a
request is cancelled after the pool handed it a new connection but before the
request ran: the connection stays in the pool as "CONNECTING" with nobody to
open it. It is neither idle nor closed, so the pool never reaps it, and it
counts against ``max_connections``; once ``max_size`` of them pile up, every
request of the HTTP pool fails with ``PoolTimeout`` against a healthy
upstream until the process restarts. resync's cancellation fuzz hits it
within a few thousand leases.

:func:`reclaim_orphaned_connections` runs after any request that did not
return (cancelled or failed): it removes connections that were never opened
and that no request in the pool owns -- they hold no socket, only the slot --
and lets httpcore hand the freed slots to requests still queued. It reads
httpcore's private state, so it does nothing unless that state looks exactly
as expected (another transport, another httpcore version).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["reclaim_orphaned_connections"]

logger = logging.getLogger("resync.pool.http")


def _orphans(pool: Any) -> list[Any]:
    connections = getattr(pool, "_connections", None)
    requests = getattr(pool, "_requests", None)
    if not isinstance(connections, list) or not isinstance(requests, list):
        return []
    owned = {id(getattr(r, "connection", None)) for r in requests}
    return [
        conn
        for conn in connections
        if id(conn) not in owned
        # Never opened (no socket behind it) and not given up on either.
        and getattr(conn, "_connection", False) is None
        and getattr(conn, "_connect_failed", True) is False
    ]


async def reclaim_orphaned_connections(transport: object, label: str = "") -> int:
    """Remove never-opened connections no request owns from ``transport``'s pool.

    ``transport`` is an ``httpx.AsyncHTTPTransport`` (anything else: no-op).
    Returns how many were removed. Without an orphan it returns at once,
    without suspending; with one, it closes what httpcore's reassignment
    gives back -- if cancelled then, the sockets are closed by httpcore's
    own cleanup on the next request.
    """
    pool = getattr(transport, "_pool", None)
    orphans = _orphans(pool)
    if not orphans:
        return 0
    for conn in orphans:
        pool._connections.remove(conn)  # type: ignore[union-attr]
    logger.debug(
        "%s: reclaimed %d connection slot(s) a cancelled request left", label, len(orphans)
    )
    reassign = getattr(pool, "_assign_requests_to_connections", None)
    close = getattr(pool, "_close_connections", None)
    if reassign is not None and close is not None:
        await close(reassign())
    return len(orphans)
