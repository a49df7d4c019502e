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

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.exc import DBAPIError, StatementError

from resync.core.exceptions import DatabaseStatementTimeoutError, ResyncError

__all__ = [
    "READ_ONLY_SQLSTATE",
    "client_state_broken",
    "connection_lost",
    "describe_sql_error",
    "driver_connection_gone",
    "error_chain",
    "refused_before_sending",
    "sqlstate_of",
    "statement_error_hook",
]

logger = logging.getLogger("resync.pool")

#: Attribute set on SQLAlchemy's error: the text forms of the values bound to it.
_BOUND = "resync_bound_values"
#: SQLAlchemy's asyncpg adapter prefixes the driver's message with its class.
_CLASS_PREFIX = re.compile(r"^<class '[^']+'>:\s*")

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


def describe_sql_error(error: BaseException) -> str:
    """What went wrong, in words that hold no bound parameter: the driver's error
    class, its SQLSTATE and the first line of its message, made safe.

    The message is left out for data exceptions (SQLSTATE class 22) and for the
    driver's own argument errors: both quote the offending value
    (``invalid input for query argument $1: 'the-api-key'``). Elsewhere every
    value bound to the failed statement (recorded by :func:`statement_error_hook`)
    is replaced by ``***``. SQLAlchemy's text, with the statement, is never used:
    the statement reaches the log only at DEBUG, its parameters never.
    """
    # SQLAlchemy's own text carries the statement: read the error it wraps.
    driver = error.orig if isinstance(error, StatementError) else error
    name = type(driver if driver is not None else error).__name__
    code = sqlstate_of(error)
    label = f"{name}, SQLSTATE {code}" if code else name
    if driver is None:
        return label
    text = str(driver).strip().splitlines()[0] if str(driver).strip() else ""
    text = _CLASS_PREFIX.sub("", text)[:200]
    if not text or (code or "").startswith("22") or "argument" in text.lower():
        return label
    for value in sorted(getattr(error, _BOUND, ()), key=len, reverse=True):
        text = text.replace(value, "***")
    return f"{label}: {text}"


def _bound_values(parameters: Any) -> tuple[str, ...]:
    """The text forms (``str`` and ``repr``) of the values bound to a statement."""
    found: set[str] = set()
    batches = parameters if isinstance(parameters, list) else [parameters]
    for batch in batches:
        values = batch.values() if isinstance(batch, Mapping) else batch
        if not isinstance(values, Iterable) or isinstance(values, str | bytes):
            continue
        for value in values:
            if value is None or isinstance(value, bool):
                continue
            for form in (str(value), repr(value)):
                if len(form) >= 3:  # shorter ones cannot be told from the message's own text
                    found.add(form)
    return tuple(found)


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
    if client_state_broken(error):
        return True
    if isinstance(error, DBAPIError):
        return bool(error.connection_invalidated)
    return isinstance(error, OSError | TimeoutError)


def error_chain(error: BaseException) -> list[BaseException]:
    """``error``, SQLAlchemy's ``orig``, and their causes and contexts."""
    found: list[BaseException] = []
    todo: list[BaseException | None] = [error]
    while todo:
        link = todo.pop()
        if link is None or any(link is seen for seen in found):
            continue
        found.append(link)
        todo += [getattr(link, "orig", None), link.__cause__, link.__context__]
    return found


# asyncpg's client-side refusals: raised before anything is sent to the server.
_REFUSED = ("connection is closed", "another operation is in progress")


def refused_before_sending(error: BaseException) -> bool:
    """Did the driver refuse the call without sending it (nothing reached the server)?

    asyncpg raises ``InterfaceError`` ("... the underlying connection is
    closed", "another operation is in progress") before any I/O, and
    ``InternalClientError`` ("cannot switch to state N") when its protocol
    state says the connection is unusable. A ``COMMIT`` refused like that was
    never sent: nothing was committed.
    """
    for link in error_chain(error):
        kind = type(link)
        if not kind.__module__.startswith("asyncpg"):
            continue
        if kind.__name__ == "InternalClientError":
            return True
        if kind.__name__ == "InterfaceError" and any(m in str(link) for m in _REFUSED):
            return True
    return False


def client_state_broken(error: BaseException) -> bool:
    """Is the driver's connection unusable on the client side (asyncpg's
    "cannot switch to state N", a closed connection)? Such an error means the
    connection was lost, whatever SQLAlchemy thinks of it."""
    for link in error_chain(error):
        kind = type(link)
        if kind.__module__.startswith("asyncpg") and (
            kind.__name__ == "InternalClientError"
            or (kind.__name__ == "InterfaceError" and "connection is closed" in str(link))
        ):
            return True
    return False


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
        wrapped = context.sqlalchemy_exception
        if wrapped is not None and context.parameters:
            # For describe_sql_error: which values to keep out of the message.
            setattr(wrapped, _BOUND, _bound_values(context.parameters))
        if logger.isEnabledFor(logging.DEBUG):  # the statement, never its parameters
            logger.debug(
                "pool '%s': statement failed (%s): %s",
                pool_name,
                describe_sql_error(error),
                scrub(context.statement or "")[:500],
            )
        if not isinstance(error, Exception | TimeoutError):
            _abort_driver(context.connection)
            return None
        if isinstance(error, TimeoutError) and not isinstance(error, ResyncError):
            _abort_driver(context.connection)
            return DatabaseStatementTimeoutError(
                f"Database operation failed: the server did not answer within the driver's "
                f"command timeout (pool '{pool_name}'); the connection is discarded. Raise "
                "the timeout or make the statement faster",
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


#: SQLSTATEs that end the connection: the server is shutting it down.
_FATAL_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def driver_connection_gone(error: BaseException) -> bool:
    """Does the driver's ``error`` itself (not its chain) say the connection is gone?

    A client-side broken state, a socket error, asyncpg's
    ``ConnectionDoesNotExistError``, SQLSTATE class 08 or an administrator
    shutdown (57P01..57P03).
    """
    if client_state_broken(error) or isinstance(error, OSError | ConnectionError):
        return True
    if type(error).__name__ == "ConnectionDoesNotExistError":  # asyncpg, mid-operation
        return True
    code = sqlstate_of(error) or ""
    return code.startswith("08") or code in _FATAL_SQLSTATES
