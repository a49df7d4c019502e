"""How the database pool reads driver errors: SQLSTATEs and lost connections.

Two questions decide what the pool does after an error, and both are answered
here so the rules live in one place:

- *Is the server read-only?* SQLSTATE ``25006`` (``read_only_sql_transaction``)
  on a write means the server we are connected to no longer takes writes -- a
  primary demoted by a failover, still reachable under the old address. Every
  pooled connection points at it, so the pool replaces them all
  (:meth:`~resync.core.pools.database.pool.DatabaseConnectionPool.replace_all_connections`).
- *Did the connection die mid-exchange?* Then the state of the connection is
  unknown (it is dropped, never reused), and if the exchange was a ``COMMIT``
  so is the transaction's fate:
  :class:`~resync.core.exceptions.DatabaseCommitUnknownError`.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.exc import DBAPIError

from resync.core.exceptions import DatabaseStatementTimeoutError, ResyncError

__all__ = ["READ_ONLY_SQLSTATE", "connection_lost", "sqlstate_of", "statement_error_hook"]

#: SQLSTATE of "cannot execute <statement> in a read-only transaction".
READ_ONLY_SQLSTATE = "25006"


def sqlstate_of(error: BaseException | None) -> str | None:
    """The SQLSTATE carried by ``error``, a SQLAlchemy or driver exception, if any.

    Looks at the error, the DBAPI error SQLAlchemy wraps (``.orig``) and the
    driver error that one wraps (asyncpg's, as ``__cause__``): each driver
    names the attribute ``sqlstate`` or ``pgcode``.
    """
    seen = 0
    while error is not None and seen < 4:  # a short chain; never loop on a cycle
        for attribute in ("sqlstate", "pgcode"):
            code = getattr(error, attribute, None)
            if isinstance(code, str) and code:
                return code
        error = error.orig if isinstance(error, DBAPIError) else error.__cause__
        seen += 1
    return None


def connection_lost(error: BaseException) -> bool:
    """Did ``error`` end an exchange with the server before its answer came back?

    True for a cancelled or interrupted call, a timeout (asyncpg's
    ``command_timeout``, an ``asyncio.timeout`` around a statement), an OS-level
    socket error, and a DBAPI error SQLAlchemy recognised as a disconnect. A
    server-side error (a constraint, a serialization failure, ``25006``) is an
    answer: the exchange completed and the server rolled the transaction back.
    """
    if not isinstance(error, Exception):
        return True
    if isinstance(error, DBAPIError):
        return bool(error.connection_invalidated)
    return isinstance(error, OSError | TimeoutError)


def statement_error_hook(
    pool_name: str, scrub: Callable[[object], str]
) -> Callable[[ExceptionContext], BaseException | None]:
    """A SQLAlchemy ``handle_error`` listener for statements cut short.

    - The driver's own statement timeout (asyncpg's ``command_timeout``) comes
      out as :class:`~resync.core.exceptions.DatabaseStatementTimeoutError`,
      a typed error of the pool, instead of a bare ``TimeoutError``.
    - After either, or a statement cancelled mid-flight, SQLAlchemy discards
      the connection, first saying goodbye to the server and waiting up to
      2 s for an answer that a dead or silent network never sends. The
      socket is aborted here instead, so the timeout or cancellation takes
      effect at once (the server rolls back the session when it closes).
    """

    def handle(context: ExceptionContext) -> BaseException | None:
        error = context.original_exception
        if not isinstance(error, Exception | TimeoutError):
            _abort_driver(context.connection)
            return None
        if isinstance(error, TimeoutError) and not isinstance(error, ResyncError):
            _abort_driver(context.connection)
            return DatabaseStatementTimeoutError(
                f"Database operation failed: the server did not answer within the driver's "
                f"command timeout: {scrub(context.statement or 'COMMIT')[:200]} (pool "
                f"'{pool_name}'); the connection is discarded",
                pool_name=pool_name,
            )
        return None

    return handle


def _abort_driver(connection: Connection | None) -> None:
    try:
        if connection is None or connection.invalidated:
            return
        driver = connection.connection.driver_connection
    except Exception:  # already closed: nothing to abort
        return
    terminate = getattr(driver, "terminate", None)  # asyncpg: closes the socket, no I/O
    if callable(terminate):
        terminate()
