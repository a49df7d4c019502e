"""One open connection of a database pool: :class:`ConnectionRecord`.

A record holds the SQLAlchemy ``AsyncConnection``, the driver objects under
it, when it expires (:func:`~resync.core.pools.kernel.pacing.expiry`: up to 5%
before ``max_lifetime``, at random, so connections opened together do not
expire together), since when it is idle and which generation of the stock
opened it; and how to validate (``begin``), reset, renew and abort it. The
records themselves are kept by :class:`~resync.core.pools.database.stock.ConnectionStock`.

Reset: what SQLAlchemy's pool undoes when a connection is checked in -- an
open driver transaction, the isolation level and other execution options a
lease set on its connection -- is undone at the end of each lease
(:meth:`ConnectionRecord.reset`), since a held connection is never checked in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from resync.core.pools.database.sqla_internals import (
    begin_hook,
    can_swap,
    swap_driver_connections,
    undo_callbacks,
)
from resync.core.pools.kernel.pacing import expiry

__all__ = ["ConnectionRecord", "drop_connection", "open_connection", "ping_connection"]


def drop_connection(conn: AsyncConnection) -> None:
    """Invalidate and release ``conn`` at once: no ``await``, so it is safe in a
    cancelled task or a callback (SQLAlchemy aborts the driver's socket)."""
    sync = conn.sync_connection
    if sync is not None and not sync.closed:
        sync.invalidate()
        sync.close()


async def open_connection(
    engine: AsyncEngine,
    opener: Callable[[AsyncEngine], Awaitable[AsyncConnection]] | None,
    timeout: float,
) -> AsyncConnection:
    """One new connection of ``engine`` (through ``opener`` if given) within
    ``timeout`` seconds, else ``TimeoutError``.

    The connect runs in its own task, so a timeout or cancellation of the
    caller never interrupts it mid-handshake: the caller's error propagates
    at once, and the abandoned connect finishes on its own (bounded by
    ``timeout`` + 1 s) and is closed. Cancelling asyncpg inside its handshake
    would leave futures whose ``ConnectionError`` nobody retrieves -- asyncio
    logs each as "Future exception was never retrieved" -- and can leak the
    socket (MagicStack/asyncpg#464).
    """
    connecting = engine.connect() if opener is None else opener(engine)
    task: asyncio.Future[AsyncConnection] = asyncio.ensure_future(
        _bounded(connecting, timeout + 1.0)
    )
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(task)
    except BaseException:
        _abandon(task)
        raise


async def _bounded(connecting: Awaitable[AsyncConnection], limit: float) -> AsyncConnection:
    # The driver's own connect timeout (set from the pool's) normally ends it
    # first; this bound holds for an opener that sets none.
    async with asyncio.timeout(limit):
        return await connecting


#: Connects whose callers gave up; referenced until they end (then closed).
_abandoned: set[asyncio.Future[AsyncConnection]] = set()


def _abandon(task: asyncio.Future[AsyncConnection]) -> None:
    if task.done():
        _close_late_connection(task)
        return
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)
    task.add_done_callback(_close_late_connection)


def _close_late_connection(task: asyncio.Future[AsyncConnection]) -> None:
    if task.cancelled():
        return
    if task.exception() is None:  # retrieving it keeps asyncio quiet
        drop_connection(task.result())


def ping_connection(connection: Connection) -> None:
    """The dialect's ping on ``connection`` (inside SQLAlchemy's greenlet); raises if dead."""
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None  # a live Connection always has one
    connection.dialect.do_ping(dbapi_connection)


class ConnectionRecord:
    """One open connection, its deadlines, and how to validate and reset it."""

    __slots__ = (
        "begin",
        "conn",
        "dbapi",
        "driver",
        "expires_at",
        "generation",
        "idle_since",
        "is_closed",
        "options",
        "stale",
        "swappable",
    )

    def __init__(self, conn: AsyncConnection, max_lifetime: float, generation: int = 0) -> None:
        now = monotonic()
        sync = conn.sync_connection
        assert sync is not None  # a connected AsyncConnection has one
        self.conn = conn
        #: The stock's generation when this connection was opened.
        self.generation = generation
        self.options = sync.get_execution_options()
        self.stale = False
        self.dbapi: Any = sync.connection.dbapi_connection
        self.driver: Any = sync.connection.driver_connection
        # SQLAlchemy's asyncpg adapter starts its transaction lazily, with the
        # first statement; starting it at checkout costs no extra round trip
        # and validates the connection (see ConnectionStock.checkout).
        self.begin: Callable[[], Awaitable[None]] | None = None
        if not getattr(self.dbapi, "autocommit", False):  # AUTOCOMMIT sends no BEGIN
            self.begin = begin_hook(self.dbapi)
        #: Can a dead driver connection be replaced under this record (see take_driver)?
        self.swappable = self.begin is not None and can_swap(self.dbapi)
        # asyncpg's flag flips when the server closes the socket; reading it is free.
        self.is_closed: Callable[[], bool] | None = getattr(self.driver, "is_closed", None)
        self.expires_at = expiry(now, max_lifetime)
        self.idle_since = now

    def dead(self) -> bool:
        """Has the driver seen the server close this connection?"""
        return self.is_closed is not None and self.is_closed()

    def abort(self) -> None:
        """Close the driver's socket now (asyncpg ``terminate()``), leaving
        SQLAlchemy's objects as they are: their next use fails at once, with
        no I/O, instead of waiting on a connection in an unknown state."""
        terminate = getattr(self.driver, "terminate", None)
        if callable(terminate) and not self.dead():
            terminate()

    def reset(self, *, rollback: bool = False) -> bool:
        """Undo what a lease left behind, as SQLAlchemy's pool does on check-in.

        Runs inside SQLAlchemy's greenlet, after the session closed. Ends a
        driver transaction the session no longer tracks (the BEGIN of a lease
        that ran nothing; SQLite after a failed COMMIT), and undoes execution
        options the lease set on the connection (isolation level,
        ``schema_translate_map`` ...). False: discard the connection instead.
        """
        sync = self.conn.sync_connection
        if sync is None or sync.invalidated:
            return False
        if rollback or self.begin is not None:
            self.dbapi.rollback()  # a no-op when no transaction is open
        if sync.get_execution_options() is self.options:
            return True
        # SQLAlchemy queues the undo of connection characteristics for the
        # pool's check-in, which a held connection never reaches: run it here.
        undo = undo_callbacks(sync.connection)
        if undo is None:
            return False
        while undo:
            undo.pop()(self.dbapi)
        self.stale = True  # the Connection object still carries the options
        return True

    def renew(self) -> None:
        """A fresh ``Connection`` object on the same driver connection (no I/O)."""
        old = self.conn.sync_connection
        assert old is not None
        fresh = Connection(old.engine, connection=old.connection)
        self.conn = AsyncConnection(self.conn.engine, fresh)
        self.options = fresh.get_execution_options()
        self.stale = False

    def take_driver(self, donor: ConnectionRecord, cursor: object = None) -> None:
        """Continue on ``donor``'s driver connection; ``donor`` gets this one's.

        For a hot connection found dead by its lazy ``BEGIN``: SQLAlchemy's
        objects (the session's ``AsyncConnection``, a cursor already made for
        the first statement) stay as they are and now talk to a fresh
        connection; ``donor`` holds the dead one, to be terminated. This record
        takes the donor's expiry too. No I/O.
        """
        swap_driver_connections(self.dbapi, donor.dbapi, cursor)
        self.driver, donor.driver = donor.driver, self.driver
        self.is_closed, donor.is_closed = donor.is_closed, self.is_closed
        self.expires_at = donor.expires_at
