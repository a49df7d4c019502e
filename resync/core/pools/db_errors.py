"""How the database pool reads driver errors: SQLSTATEs and lost connections.

Two questions decide what the pool does after an error, and both are answered
here so the rules live in one place:

- *Is the server read-only?* SQLSTATE ``25006`` (``read_only_sql_transaction``)
  on a write means the server we are connected to no longer takes writes -- a
  primary demoted by a failover, still reachable under the old address. Every
  pooled connection points at it, so the pool replaces them all
  (:meth:`~resync.core.pools.db_pool.DatabaseConnectionPool.replace_all_connections`).
- *Did the connection die mid-exchange?* Then the state of the connection is
  unknown (it is dropped, never reused), and if the exchange was a ``COMMIT``
  so is the transaction's fate:
  :class:`~resync.core.exceptions.DatabaseCommitUnknownError`.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

__all__ = ["READ_ONLY_SQLSTATE", "connection_lost", "sqlstate_of"]

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
