"""Every use of httpx's and httpcore's private state, in one place.

Why private state: httpcore has no public API to change a pool's limits after
it is built, to find the connection pool behind an ``httpx.AsyncHTTPTransport``,
or to repair its bookkeeping after a cancellation.
Nothing else in resync reads or writes these attributes; every function here
checks that the state looks exactly as expected and otherwise does nothing
(another transport, another httpx/httpcore version). Checked against httpx
0.29.0 and httpcore 1.0.9 (the development environment; resync asks for
httpx >= 0.27); the state used is ``AsyncHTTPTransport._pool``,
``AsyncConnectionPool._connections``, ``._requests``, ``._max_connections``,
``._max_keepalive_connections``, ``._assign_requests_to_connections()``,
``AsyncHTTPConnection._connection``, httpx's ``AsyncResponseStream._httpcore_stream``
and httpcore's ``PoolByteStream._pool``, ``._pool_request``, ``._closed``.

What it does with that state:

- :func:`connection_pool_of` finds httpcore's pool behind a transport (the
  HTTP pool's stats, drain and resize then use its public ``connections``);
- :func:`set_connection_limits` changes httpcore's own limits (resize);
- :func:`reclaim_orphaned_connections` and :class:`GuardedStream` give back
  the connection slots that cancelled requests leave in httpcore's pool.

httpcore 1.0 loses a slot of ``max_connections`` in two ways that resync's
cancellation fuzz hits within a few thousand leases; once ``max_size`` slots
are gone every request of the HTTP pool fails with ``PoolTimeout`` against a
healthy upstream, until the process restarts:

- a request cancelled after the pool handed it a new connection, before it
  ran, leaves that connection "CONNECTING" with nobody to open it
  (encode/httpcore#1093, also #658 and #830);
- httpcore's clean-up after a cancellation (closing the response, resetting
  the connection) runs under an anyio shield, which does not stop a native
  asyncio ``task.cancel()``: a second cancellation during it leaves the
  request registered in the pool for good, or its connection half-used with
  no owner.

:func:`reclaim_orphaned_connections` repairs the pool after any request that
did not return and after any response whose close was interrupted: it
unregisters a request whose response was closed, drops connections no request
owns that are neither idle nor closed (never opened, or stuck mid-exchange),
closes the sockets of the latter in the background -- nothing here awaits, so
a further cancellation cannot cut it short -- and lets httpcore hand the
freed slots to requests still queued. It reads httpcore's private state, so it
does nothing unless that state looks exactly as expected (another transport,
another httpcore version). :class:`GuardedStream` applies it to responses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

__all__ = [
    "GuardedStream",
    "connection_pool_of",
    "reclaim_orphaned_connections",
    "set_connection_limits",
]

logger = logging.getLogger("resync.pool.http")

# Background closes of reclaimed connections (kept referenced until done).
_closing: set[asyncio.Future[Any]] = set()


def _pool_of(obj: object) -> Any:
    """httpcore's ``AsyncConnectionPool`` behind an httpx transport, else None."""
    pool = getattr(obj, "_pool", obj)
    if isinstance(getattr(pool, "_connections", None), list) and isinstance(
        getattr(pool, "_requests", None), list
    ):
        return pool
    return None


def connection_pool_of(transport: object) -> Any:
    """The connection pool behind an httpx transport (anything with ``connections``), else None.

    None for a closed client's or a custom transport without one.
    """
    core = getattr(transport, "_pool", None)
    return core if hasattr(core, "connections") else None


def set_connection_limits(core: object, max_connections: int, max_keepalive: int) -> bool:
    """Set httpcore's ``max_connections`` and ``max_keepalive_connections`` of ``core``.

    Returns False, changing nothing, if this httpcore keeps no such limits.
    Takes effect for the next request httpcore assigns.
    """
    if not (hasattr(core, "_max_connections") and hasattr(core, "_max_keepalive_connections")):
        return False
    pool: Any = core
    pool._max_connections = max_connections
    pool._max_keepalive_connections = max_keepalive
    return True


def _close_in_background(connections: list[Any]) -> None:
    for conn in connections:
        future = asyncio.ensure_future(conn.aclose())
        _closing.add(future)
        future.add_done_callback(_closing.discard)
        # A close that fails has nothing left to report to anyone.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())


def reclaim_orphaned_connections(transport: object, label: str = "") -> int:
    """Drop connections of ``transport``'s pool that no request owns and nobody will finish.

    ``transport`` is an ``httpx.AsyncHTTPTransport`` or httpcore's pool
    (anything else: no-op). Returns how many connections were dropped.
    Synchronous: sockets are closed by background tasks.
    """
    pool = _pool_of(transport)
    if pool is None:
        return 0
    owned = {id(getattr(r, "connection", None)) for r in pool._requests}
    orphans = [
        conn
        for conn in pool._connections
        if id(conn) not in owned and not conn.is_idle() and not conn.is_closed()
    ]
    if not orphans:
        return 0
    for conn in orphans:
        pool._connections.remove(conn)
    logger.debug("%s: reclaimed %d slot(s) a cancelled request left", label, len(orphans))
    # A never-opened connection has no socket; a half-used one does.
    _close_in_background([c for c in orphans if getattr(c, "_connection", None) is not None])
    _close_in_background(pool._assign_requests_to_connections())
    return len(orphans)


def _release_interrupted_close(stream: object, label: str) -> None:
    """If httpcore's close of this response was cut short, finish its bookkeeping."""
    core = getattr(stream, "_httpcore_stream", stream)
    pool = _pool_of(getattr(core, "_pool", None))
    request = getattr(core, "_pool_request", None)
    if pool is None or not getattr(core, "_closed", False) or request not in pool._requests:
        return
    pool._requests.remove(request)
    reclaim_orphaned_connections(pool, label)


class GuardedStream(httpx.AsyncByteStream):
    """A response body whose close, even if interrupted, gives its slot back."""

    def __init__(self, stream: httpx.AsyncByteStream, label: str) -> None:
        self._stream = stream
        self._label = label

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except BaseException:
            _release_interrupted_close(self._stream, self._label)
            raise

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        except BaseException:
            _release_interrupted_close(self._stream, self._label)
            raise
