"""Replacing every connection of a database pool: ``drain()`` and read-only servers.

A mixin of :class:`~resync.core.pools.database.pool.DatabaseConnectionPool`. The
rule is generational (see :meth:`ConnectionStock.retire_all
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
probe) calls :meth:`DatabaseReplacement.replace_all_connections` the same way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection, ExceptionContext

from resync.core.pools.database.errors import READ_ONLY_SQLSTATE, sqlstate_of
from resync.core.pools.kernel.state import PoolState

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from resync.core.pools.database.stock import ConnectionStock, HeldConnection
    from resync.core.pools.kernel.admission import AdmissionGate

__all__ = ["DatabaseReplacement"]

logger = logging.getLogger("resync.pool")


class DatabaseReplacement:
    """``replace_all_connections``, the ``drain()`` hook and the 25006 handler."""

    #: Errors with SQLSTATE 25006 seen (each retires the connections at most once).
    read_only_errors: int
    #: Times every connection was retired (``drain()`` or a read-only server).
    replacements: int
    _replacer: asyncio.Task[None] | None

    if TYPE_CHECKING:
        _stock: ConnectionStock
        _leased: dict[AsyncSession, HeldConnection]
        _state: PoolState
        _gate: AdmissionGate

        @property
        def name(self) -> str: ...
        def _scrub(self, error: object) -> str: ...

    def _init_replacement(self) -> None:
        self.read_only_errors = 0
        self.replacements = 0
        self._replacer = None

    async def _stop_replacement(self) -> None:
        task, self._replacer = self._replacer, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    def replace_all_connections(self, reason: str) -> int:
        """Retire every connection now, so each later lease runs on a fresh one.

        For when the server behind the connections changed or went bad (a
        read-only ex-primary, a failover): no I/O and no ``await``, so it can
        be called from anywhere, a SQLAlchemy event handler included. Idle
        connections are closed in the background and reopened up to
        ``min_size``; leased ones are closed when their lease ends. Logs
        ``reason`` once; returns how many connections were retired (0 unless
        the pool is ready). ``close()`` stops the background replacement.
        """
        if self._state is not PoolState.READY:
            return 0
        retired = self._stock.retire_all()
        self.replacements += 1
        logger.warning("pool '%s': %s; replacing all %d connection(s)", self.name, reason, retired)
        if self._replacer is None or self._replacer.done():
            self._replacer = asyncio.ensure_future(self._replace_retired(0.0))
        return retired

    async def _replace_connections(self, interval: float | None) -> int:
        retired = self._stock.retire_all()
        self.replacements += 1
        spread = min(float(retired), 30.0) if interval is None else interval
        await self._replace_retired(spread)
        return retired

    async def _replace_retired(self, interval: float) -> None:
        try:
            await self._stock.replace_retired(
                self._gate, lambda: self._state is PoolState.READY, interval
            )
        except Exception as exc:  # maintenance drops what is left
            logger.warning("pool '%s': replacing connections: %s", self.name, self._scrub(exc))

    def _on_driver_error(self, context: ExceptionContext) -> None:
        """SQLAlchemy's ``handle_error`` hook: a read-only server retires the pool.

        Errors with SQLSTATE 25006 are counted; the first one from a current
        connection retires them all (:meth:`replace_all_connections`). Those
        from connections already retired only count, so a burst of failing
        leases causes one replacement and one log line.
        """
        if sqlstate_of(context.original_exception) != READ_ONLY_SQLSTATE:
            return
        self.read_only_errors += 1
        held = self._held_by(context.connection)
        if held is not None and self._stock.is_retired(held):
            logger.debug("pool '%s': read-only error on a retired connection", self.name)
            return
        self.replace_all_connections(
            "the server refused a write as read-only (SQLSTATE 25006: a demoted primary?)"
        )

    def _held_by(self, connection: Connection | None) -> HeldConnection | None:
        if connection is None or connection.invalidated:
            return None
        dbapi = connection.connection.dbapi_connection
        for held in self._leased.values():
            if held.dbapi is dbapi:
                return held
        return None
