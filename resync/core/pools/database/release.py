"""How a database lease ends: commit or roll back, and what to tell the caller.

:class:`LeaseEnd`, owned by
:class:`~resync.core.pools.database.pool.DatabaseConnectionPool`, runs its
``_release_connection``. The rules, in the order they apply:

- a clean exit flushes, then commits. A failing flush or a ``COMMIT`` the
  server refused rolls back and raises ``DatabaseError("Database operation
  failed: commit failed and was rolled back ...")``: nothing was committed.
- a ``COMMIT`` whose answer never came (the connection broke, the driver's
  command timeout fired) raises
  :class:`~resync.core.exceptions.DatabaseCommitUnknownError`: the server may
  or may not have committed. This is the only error after which a
  transaction's fate is open.
- an exception out of the lease body rolls back. If the exception says the
  exchange with the server was cut short (cancelled, timed out,
  disconnected) the connection is aborted instead -- no ``ROLLBACK`` is sent
  into a connection in an unknown state, nor waited for on a silent network;
  the server rolls back a session whose socket closed. Otherwise the
  ``ROLLBACK`` gets ``connection_timeout`` before the connection is aborted.
- whatever happens, the connection goes back to the stock (kept or closed),
  and the session is unbound, so a reference kept past the lease is inert.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from resync.core.exceptions import (
    DatabaseCommitUnknownError,
    DatabaseConnectionLostError,
    ErrorFamily,
)
from resync.core.pools.database.errors import (
    connection_lost,
    describe_sql_error,
    refused_before_sending,
)
from resync.core.pools.database.record import ConnectionRecord
from resync.core.pools.database.stock import ConnectionStock
from resync.core.pools.kernel.stats import ConnectionPoolStats

__all__ = ["CoreLeases", "LeaseEnd"]

logger = logging.getLogger("resync.pool")


class _CommitFailed(Exception):
    """``COMMIT`` itself failed (``__cause__``), not the flush before it."""


# Run inside SQLAlchemy's greenlet: one switch for the whole step.
def _commit_and_close(session: Session, held: ConnectionRecord | None) -> bool:
    session.flush()  # a failure here comes before COMMIT: nothing was committed
    try:
        session.commit()
    except Exception as exc:
        raise _CommitFailed() from exc
    session.close()
    try:
        return held is None or held.reset()
    except Exception:  # committed all the same; the connection is just not reused
        return False


def _commit_connection(connection: Connection, held: ConnectionRecord) -> bool:
    """Core lease: commit what the lease began, then reset (inside the greenlet)."""
    if connection.in_transaction():
        try:
            connection.commit()
        except Exception as exc:
            raise _CommitFailed() from exc
    try:
        return held.reset()
    except Exception:  # committed all the same; the connection is just not reused
        return False


def _rollback_connection(connection: Connection, held: ConnectionRecord | None) -> Exception | None:
    try:
        # Unconditionally: after a failed COMMIT the transaction is inactive
        # (in_transaction() is False) yet must still be rolled back; a no-op otherwise.
        connection.rollback()
        if held is not None and not held.reset(rollback=True):
            return RuntimeError("the connection could not be reset")
    except Exception as exc:
        return exc
    return None


def _rollback_and_close(session: Session, held: ConnectionRecord | None) -> Exception | None:
    try:
        session.rollback()
        session.close()
        if held is not None and not held.reset(rollback=True):
            return RuntimeError("the connection could not be reset")
    except Exception as exc:
        try:
            session.close()
        except Exception as close_exc:
            logger.debug("closing a session after a failed rollback: %s", type(close_exc).__name__)
        return exc
    return None


class LeaseEnd:
    """Ends the leases of one pool; see the module docstring.

    ``rollback_timeout`` bounds the ``ROLLBACK`` the pool sends itself (the
    pool's ``connection_timeout``); ``errors`` is the pool's error family and
    ``scrub`` its secret filter. Counts a lost connection into
    ``stats.connection_errors`` and an error the server answered (bad SQL, a
    constraint) into ``stats.server_errors``.
    """

    __slots__ = ("errors", "name", "rollback_timeout", "scrub", "stats", "stock")

    def __init__(
        self,
        name: str,
        *,
        stock: ConnectionStock,
        stats: ConnectionPoolStats,
        errors: ErrorFamily,
        rollback_timeout: float,
        scrub: Callable[[object], str],
    ) -> None:
        self.name = name
        self.stock = stock
        self.stats = stats
        self.errors = errors
        self.rollback_timeout = rollback_timeout
        self.scrub = scrub

    async def end(self, session: AsyncSession, error: BaseException | None) -> None:
        """End the lease of ``session``: commit (``error is None``) or roll back.

        Raises the commit failures the module docstring lists. Cancelled, the
        connection is discarded (its state is unknown) and the cancellation
        propagates; either way the connection goes back to the stock and the
        session is unbound. A lease cut off by ``close()`` (after the drain)
        finds its connection already terminated, so its commit fails.
        """
        held = self.stock.take_back(session)
        reusable = False
        failure: Exception | None = None
        commit_sent = False
        try:
            if error is None and held is not None and self._untouched(session, held):
                # An empty hot lease: nothing to flush, commit or reset, so no
                # greenlet either; close() of a session without a transaction
                # does no I/O.
                session.sync_session.close()
                reusable = True
            elif error is None:
                try:
                    reusable = await session.run_sync(_commit_and_close, held)
                except _CommitFailed as exc:
                    failure = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
                    commit_sent = True
                    reusable = await self._roll_back(session, held, failure)
                except Exception as exc:  # the flush: COMMIT was never sent
                    failure = exc
                    reusable = await self._roll_back(session, held, exc)
            else:
                if isinstance(error, SQLAlchemyError):
                    self._count(error)
                reusable = await self._roll_back(session, held, error)
        finally:
            # A reference kept past the lease must not reach this connection again.
            session.bind = session.sync_session.bind = None
            if held is not None:  # None: cut off by close() after the drain
                self.stock.check_in(held, reusable)
        if failure is not None:
            self._raise_commit_failure(failure, commit_sent=commit_sent)

    async def end_connection(
        self, connection: AsyncConnection, error: BaseException | None
    ) -> None:
        """End a ``connection()`` lease: commit on a clean exit, else roll back.

        The same rules and errors as :meth:`end` (commit refused, commit
        outcome unknown, lost before sending), without an ORM session.
        """
        held = self.stock.take_back(connection)
        if held is None:  # cut off by close() after the drain
            return
        reusable = False
        failure: Exception | None = None
        try:
            if error is None and self._connection_untouched(connection, held):
                reusable = True  # an empty hot lease: nothing began, nothing to end
            elif error is None:
                try:
                    reusable = await connection.run_sync(_commit_connection, held)
                except _CommitFailed as exc:
                    failure = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
                    reusable = await self._roll_back_connection(connection, held, failure)
            else:
                if isinstance(error, SQLAlchemyError):
                    self._count(error)
                reusable = await self._roll_back_connection(connection, held, error)
        finally:
            self.stock.check_in(held, reusable)
        if failure is not None:
            self._raise_commit_failure(failure, commit_sent=True)

    def _untouched(self, session: AsyncSession, held: ConnectionRecord) -> bool:
        sync = session.sync_session
        return (
            not sync.in_transaction()
            and not sync.new
            and not sync.deleted
            and not sync.dirty
            and self._connection_untouched(held.conn, held)
        )

    def _connection_untouched(self, connection: AsyncConnection, held: ConnectionRecord) -> bool:
        # No statement ran (the hot checkout's BEGIN still waits for one), no
        # transaction was begun and no execution option was set on it.
        sync = connection.sync_connection
        return (
            self.stock.untouched(held)
            and sync is not None
            and not sync.in_transaction()
            and sync.get_execution_options() is held.options
        )

    async def _roll_back_connection(
        self, connection: AsyncConnection, held: ConnectionRecord, cause: BaseException
    ) -> bool:
        if connection_lost(cause):
            held.abort()
            return False
        try:
            async with asyncio.timeout(self.rollback_timeout):
                problem = await connection.run_sync(_rollback_connection, held)
        except TimeoutError:
            held.abort()
            return False
        if problem is not None:
            self._rollback_failed(cause, problem)
            return False
        return True

    def _count(self, error: BaseException) -> None:
        """A lost connection is a connection error; an answer of the server is not."""
        if connection_lost(error):
            self.stats.connection_errors += 1
        else:
            self.stats.server_errors += 1

    def _raise_commit_failure(self, failure: Exception, *, commit_sent: bool) -> None:
        """Raise the caller's error for a failed commit step (``commit_sent``: the
        ``COMMIT`` itself failed, not the flush before it)."""
        lost = connection_lost(failure)
        if lost and commit_sent and not refused_before_sending(failure):
            self.stats.connection_errors += 1
            raise DatabaseCommitUnknownError(
                f"Database operation failed: the connection was lost during COMMIT, so the "
                f"transaction may or may not have been committed ({describe_sql_error(failure)}) "
                f"(pool '{self.name}'). Check for its effect before retrying it",
                pool_name=self.name,
            ) from None
        if not isinstance(failure, SQLAlchemyError):
            raise failure
        self._count(failure)
        if lost:  # the connection was gone before COMMIT could be sent
            raise DatabaseConnectionLostError(
                f"Database operation failed: the connection was lost before COMMIT was sent "
                f"({describe_sql_error(failure)}) (pool '{self.name}'); nothing was committed, "
                "retry the transaction",
                pool_name=self.name,
            ) from None
        # The driver's text may quote a value (a constraint's key): class and SQLSTATE only.
        raise self.errors.base(
            f"Database operation failed: commit failed and was rolled back "
            f"({describe_sql_error(failure)}) (pool '{self.name}')",
            pool_name=self.name,
        ) from None

    async def _roll_back(
        self, session: AsyncSession, held: ConnectionRecord | None, cause: BaseException
    ) -> bool:
        """Roll back and close ``session``; False: discard the connection.

        After an error that left the exchange unfinished (cancelled, timed out,
        disconnected) the connection is cut off first, without a ``ROLLBACK``:
        its state is unknown, a dead or silent network would make the
        ``ROLLBACK`` wait, and the server rolls back a closed session anyway.
        Otherwise the ``ROLLBACK`` gets ``connection_timeout``; past it the
        connection is cut off.
        """
        if connection_lost(cause):
            if held is not None:
                held.abort()
            await session.run_sync(_rollback_and_close, None)
            return False
        timeout = self.rollback_timeout
        try:
            async with asyncio.timeout(timeout):
                problem = await session.run_sync(_rollback_and_close, held)
        except TimeoutError:
            if held is not None:
                held.abort()
            await session.run_sync(_rollback_and_close, None)
            problem = TimeoutError(f"no answer to ROLLBACK within {timeout:g}s")
        if problem is None:
            return True
        self._rollback_failed(cause, problem)
        return False

    def _rollback_failed(self, cause: BaseException, problem: BaseException) -> None:
        logger.warning(
            "pool '%s': rollback after %s failed; discarding the connection: %s",
            self.name,
            type(cause).__name__,
            self.scrub(problem),
        )


class CoreLeases:
    """The ``connection()`` kind of a database pool (a kernel ``LeaseKind``):
    SQLAlchemy Core's ``AsyncConnection`` on one pooled connection.

    Checkout is the session lease's (the transaction's ``BEGIN`` proves the
    connection alive); the end is :meth:`LeaseEnd.end_connection`; errors map
    as the pool's (``map_error``: the pool's own mapping).
    """

    __slots__ = ("_end", "_map", "stock")

    def __init__(
        self,
        stock: ConnectionStock,
        end: LeaseEnd,
        map_error: Callable[[BaseException], BaseException],
    ) -> None:
        self.stock = stock
        self._end = end
        self._map = map_error

    async def acquire(self, timeout: float) -> AsyncConnection:
        """A validated connection inside a begun transaction, within ``timeout``."""
        held = await self.stock.checkout(timeout)
        connection = held.conn
        self.stock.lend(connection, held)
        return connection

    async def release(self, connection: AsyncConnection, error: BaseException | None) -> None:
        """Commit (clean exit) or roll back, then give the connection back."""
        await self._end.end_connection(connection, error)

    def map_error(self, error: BaseException) -> BaseException:
        """The pool's error for one raised inside the block."""
        return self._map(error)
