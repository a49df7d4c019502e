"""Replacing every connection of a database pool: ``drain()`` and read-only servers.

:class:`Replacement`, owned by
:class:`~resync.core.pools.database.pool.DatabaseConnectionPool`. The rule is
generational (see :meth:`ConnectionStock.retire_all
<resync.core.pools.database.stock.ConnectionStock.retire_all>`): retiring
starts a new generation, and no connection of an older one is handed out
again -- idle ones are closed and reopened up to ``min_size``, leased ones
are closed when their lease ends.

Two things retire the connections:

- ``await pool.drain(interval)`` (the base pool's API): idle connections are
  replaced one at a time, spread over ``interval`` seconds;
- a write refused with SQLSTATE 25006 (``read_only_sql_transaction``): the
  server behind the pool's address no longer takes writes -- typically a
  primary demoted by a failover, while the address (DNS, VIP, proxy) now
  leads to the new primary. The pool retires every connection at once, in
  the background, and new leases connect afresh. It is counted
  (``read_only_errors`` in the stats' ``details``) and logged once per
  replacement: errors from connections already retired only count.

Code that learns of a failover some other way (a replica manager, a health
probe) calls :meth:`DatabaseConnectionPool.replace_all_connections
<resync.core.pools.database.pool.DatabaseConnectionPool.replace_all_connections>`
the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy.engine import Connection, ExceptionContext

from resync.core.pools.database.errors import READ_ONLY_SQLSTATE, sqlstate_of
from resync.core.pools.database.record import ConnectionRecord
from resync.core.pools.database.stock import ConnectionStock
from resync.core.pools.kernel.loops import start_task, stop_task
from resync.core.pools.kernel.pacing import drain_interval

__all__ = ["Replacement"]

logger = logging.getLogger("resync.pool")


class Replacement:
    """Retires and replaces the connections of one pool's ``stock``.

    Owns the counters and the background task of a replacement; ``is_ready``
    is the pool's (nothing is retired unless it is ready).
    """

    def __init__(
        self,
        name: str,
        *,
        stock: ConnectionStock,
        is_ready: Callable[[], bool],
        scrub: Callable[[object], str],
    ) -> None:
        self.name = name
        #: Errors with SQLSTATE 25006 seen (each retires the connections at most once).
        self.read_only_errors = 0
        #: Times every connection was retired (``drain()`` or a read-only server).
        self.replacements = 0
        self._stock = stock
        self._is_ready = is_ready
        self._scrub = scrub
        self._replacer: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        """Stop the background replacement, if one runs (``close()``): cancel it and
        wait until it ended. Cancelling the caller propagates at once."""
        task, self._replacer = self._replacer, None
        await stop_task(task)

    def replace_all(self, reason: str) -> int:
        """Retire every connection now; see ``replace_all_connections`` of the pool.

        No I/O and no ``await``: idle connections are closed in a background
        task (one at a time, reopening up to ``min_size``), leased ones when
        their lease ends. Logs ``reason``; returns how many connections were
        retired, 0 (and nothing done) unless the pool is ready.
        """
        if not self._is_ready():
            return 0
        retired = self._stock.retire_all()
        self.replacements += 1
        logger.warning("pool '%s': %s; replacing all %d connection(s)", self.name, reason, retired)
        if self._replacer is None or self._replacer.done():
            self._replacer = start_task(
                self._replace_retired(0.0), name=f"resync-db-replace-{self.name}"
            )
        return retired

    async def drain(self, interval: float | None) -> int:
        """The ``drain()`` hook: retire every connection and replace the idle ones
        spread over the kernel's :func:`~resync.core.pools.kernel.pacing.drain_interval`.

        Returns how many were retired. Cancelled, the spreading stops and the
        cancellation propagates; checkouts and maintenance drop the rest.
        """
        retired = self._stock.retire_all()
        self.replacements += 1
        await self._replace_retired(drain_interval(interval, retired))
        return retired

    async def _replace_retired(self, interval: float) -> None:
        try:
            await self._stock.replace_retired(interval)
        except Exception as exc:  # maintenance drops what is left
            logger.warning("pool '%s': replacing connections: %s", self.name, self._scrub(exc))

    def on_driver_error(self, context: ExceptionContext) -> None:
        """SQLAlchemy's ``handle_error`` hook: a read-only server retires the pool.

        Errors with SQLSTATE 25006 are counted; the first one from a current
        connection retires them all (:meth:`replace_all`). Those from
        connections already retired only count, so a burst of failing leases
        causes one replacement and one log line.
        """
        if sqlstate_of(context.original_exception) != READ_ONLY_SQLSTATE:
            return
        self.read_only_errors += 1
        held = self._held_by(context.connection)
        if held is not None and self._stock.is_retired(held):
            logger.debug("pool '%s': read-only error on a retired connection", self.name)
            return
        self.replace_all(
            "the server refused a write as read-only (SQLSTATE 25006: a demoted primary?)"
        )

    def _held_by(self, connection: Connection | None) -> ConnectionRecord | None:
        if connection is None or connection.invalidated:
            return None
        return self._stock.leased_with(connection.connection.dbapi_connection)
