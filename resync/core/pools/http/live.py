"""Drain and resize for the HTTP pool, on the connections inside its httpx client.

httpx keeps its connections in an ``httpcore.AsyncConnectionPool`` and opens
them on demand, so :class:`ConnectionTurnover` works on that pool (found by
:func:`~resync.core.pools.http.httpcore_state.connection_pool_of`, as the HTTP
pool's stats are) using httpcore's connection interface (``is_idle``,
``is_closed``, ``aclose``):

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
from collections.abc import Callable
from typing import Any

from resync.core.pools.http.httpcore_state import set_connection_limits
from resync.core.pools.kernel.pacing import drain_pause
from resync.core.pools.kernel.stats import ConnectionPoolStats

__all__ = ["ConnectionTurnover"]

logger = logging.getLogger("resync.pool.http")

_POLL = 0.05


class ConnectionTurnover:
    """Replaces and trims the connections of one HTTP pool's httpcore pool.

    ``core_pool`` returns httpcore's pool under the client (None when closed
    or behind a custom transport: then drain and resize do nothing);
    ``is_ready`` says whether the HTTP pool is still open (a drain stops once
    it is closing). Each closed connection is counted in
    ``stats.connection_closures``; ``scrub`` masks secrets in close errors.
    """

    def __init__(
        self,
        name: str,
        stats: ConnectionPoolStats,
        *,
        core_pool: Callable[[], Any],
        is_ready: Callable[[], bool],
        scrub: Callable[[object], str],
    ) -> None:
        self._name = name
        self._stats = stats
        self._core_pool = core_pool
        self._is_ready = is_ready
        self._scrub = scrub

    async def _close_if_idle(self, conn: Any) -> bool:
        """Close ``conn`` if no request uses it; True when it is closed now."""
        if conn.is_closed():
            return True
        if not conn.is_idle():
            return False
        try:
            await conn.aclose()
        except Exception as exc:  # it is gone either way
            logger.debug("pool '%s': closing a connection: %s", self._name, self._scrub(exc))
        self._stats.connection_closures += 1
        return True

    async def drain(self, interval: float | None, grace: float) -> int:
        """Replace every open connection; return how many were open.

        Busy connections are waited for up to ``grace`` seconds after the
        spread; any still busy then are left to httpx's ``keepalive_expiry``.
        Stops early once the pool is closing. Cancelled, it stops where it
        is; connections not closed yet stay in use.
        """
        core = self._core_pool()
        if core is None:
            return 0
        snapshot = [conn for conn in core.connections if not conn.is_closed()]
        pause = drain_pause(interval, len(snapshot))
        busy: list[Any] = []
        for conn in snapshot:
            if not self._is_ready():
                return len(snapshot)
            if not await self._close_if_idle(conn):
                busy.append(conn)
            busy = [c for c in busy if not await self._close_if_idle(c)]
            if pause:
                await asyncio.sleep(pause)
        deadline = time.monotonic() + grace
        while busy and self._is_ready() and time.monotonic() < deadline:
            await asyncio.sleep(_POLL)
            busy = [c for c in busy if not await self._close_if_idle(c)]
        if busy:
            logger.info(
                "pool '%s': %d connection(s) still busy after the drain; httpx retires them later",
                self._name,
                len(busy),
            )
        return len(snapshot)

    async def resize(self, max_size: int, keepalive_limit: int | None) -> None:
        """Apply ``max_size`` to httpcore's limits; close idle connections above it.

        ``keepalive_limit`` is the caller's ``max_keepalive_connections``, if
        any (capped at ``max_size``). Busy surplus connections are left to
        finish; httpcore does not keep them once they are idle above the
        keep-alive limit.
        """
        core = self._core_pool()
        if core is None:
            return
        keepalive = max_size if keepalive_limit is None else min(keepalive_limit, max_size)
        if not set_connection_limits(core, max_size, keepalive):
            logger.warning("pool '%s': this httpcore has no limits to resize", self._name)
            return
        open_now = [conn for conn in core.connections if not conn.is_closed()]
        surplus = len(open_now) - max_size
        for conn in open_now:
            if surplus <= 0:
                break
            if await self._close_if_idle(conn):
                surplus -= 1
