"""``pool.driver_connection()``: the driver's own connection, under the pool's rules.

``async with pool.driver_connection() as conn`` yields the driver connection
itself -- an ``asyncpg.Connection`` for PostgreSQL, an ``aiosqlite.Connection``
for SQLite -- from the same stock, admission gate, stats, histograms, leak
detection and breaker as ``get_connection()``. What it adds is less:

- **no transaction of its own**: statements autocommit unless the caller
  opens one (``async with conn.transaction():`` on asyncpg);
- **no round trip at checkout** for a connection used successfully within
  :data:`~resync.core.pools.database.stock.HOT_WINDOW` (0.5 s) and not
  suspected since (another connection found dead, a drain); older ones are
  pinged first (every one with the pool's ``check="always"``, and when no
  statement timeout is in force). asyncpg's ``is_closed()`` is read on
  every checkout.

At release: a transaction the caller left open is rolled back; a connection
whose state is unknown -- the lease was cancelled mid-statement, the
statement timed out, the connection broke -- is discarded, never reused; the
optional ``driver_reset`` of the pool runs last (e.g. ``RESET ALL`` for an
application that ``SET``\\s session state). resync does not run asyncpg's own
reset (``RESET ALL; UNLISTEN *; CLOSE ALL; pg_advisory_unlock_all()``) on
every release: like psycopg_pool and HikariCP it resets what it knows
changed, so a lease costs one round trip per statement and nothing else.
Session state a caller ``SET`` without ``driver_reset`` stays on the
connection for the next lease.

The window's price: a server that closed a connection less than a few
milliseconds before a checkout (``pg_terminate_backend``, a restart) may fail
the lease's first statement, because the loop has not yet read the server's
goodbye; that error is the typed, retry-safe
:class:`~resync.core.exceptions.DatabaseConnectionLostError`. A black-holed
connection is never flagged by ``is_closed()``: the pool's statement timeout
(``DB_POOL_STATEMENT_TIMEOUT``) bounds it.

Errors raised inside the block come out as the pool's: a driver error the
server answered with is a ``DatabaseError`` naming its class and SQLSTATE
(never the values), a broken connection ``DatabaseConnectionLostError``, the
statement timeout ``DatabaseStatementTimeoutError``; other exceptions pass
unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from resync.core.exceptions import (
    DatabaseConnectionLostError,
    DatabaseStatementTimeoutError,
    ErrorFamily,
    ResyncError,
)
from resync.core.pools.database.errors import describe_sql_error
from resync.core.pools.database.errors import driver_connection_gone as _lost
from resync.core.pools.database.stock import ConnectionStock
from resync.core.pools.kernel.stats import ConnectionPoolStats

__all__ = ["DriverLeases", "DriverReset"]

logger = logging.getLogger("resync.pool")

#: A full reset for applications that change session state (``SET`` ...).
DriverReset = Callable[[Any], Awaitable[object]]

_DRIVER_MODULES = ("asyncpg", "sqlite3", "aiosqlite")


def _is_driver_error(error: BaseException) -> bool:
    return type(error).__module__.split(".")[0] in _DRIVER_MODULES


class DriverLeases:
    """The ``driver_connection()`` kind of one database pool (a kernel ``LeaseKind``).

    Owns nothing of its own: the records are the stock's, the counters the
    pool's (``connection_errors`` for a broken connection, ``server_errors``
    for an error the server answered with).
    """

    __slots__ = ("errors", "name", "reset", "rollback_timeout", "stats", "stock")

    def __init__(
        self,
        name: str,
        *,
        stock: ConnectionStock,
        stats: ConnectionPoolStats,
        errors: ErrorFamily,
        rollback_timeout: float,
        reset: DriverReset | None = None,
    ) -> None:
        self.name = name
        self.stock = stock
        self.stats = stats
        self.errors = errors
        self.rollback_timeout = rollback_timeout
        self.reset = reset

    async def acquire(self, timeout: float) -> Any:
        """A live driver connection within ``timeout`` (see the module docstring)."""
        held = await self.stock.checkout(timeout, transactional=False)
        driver = held.driver
        self.stock.lend(driver, held)
        return driver

    async def release(self, driver: Any, error: BaseException | None) -> None:
        """Give ``driver`` back: rolled back if left in a transaction, discarded
        if its state is unknown. Cancelled, the connection is discarded and the
        cancellation propagates."""
        held = self.stock.take_back(driver)
        if held is None:  # cut off by close() after the drain
            return
        reusable = False
        try:
            reusable = await self._end(driver, error)
        finally:
            self.stock.check_in(held, reusable)

    async def _end(self, driver: Any, error: BaseException | None) -> bool:
        if error is not None:
            if not isinstance(error, Exception) or isinstance(error, TimeoutError):
                return False  # cancelled or timed out mid-statement: state unknown
            if _lost(error):
                self.stats.connection_errors += 1
                return False
            if _is_driver_error(error):
                self.stats.server_errors += 1
        open_transaction = _in_transaction(driver)
        if not open_transaction and self.reset is None:
            return True  # nothing to send: no timer either (the hot path)
        try:
            async with asyncio.timeout(self.rollback_timeout):
                if open_transaction:
                    await _roll_back(driver)
                if self.reset is not None:
                    await self.reset(driver)
        except Exception as exc:
            logger.info(
                "pool '%s': a driver connection could not be reset and is discarded: %s",
                self.name,
                type(exc).__name__,
            )
            return False
        return True

    def map_error(self, error: BaseException) -> BaseException:
        """The pool's error for one raised inside the block (others unchanged)."""
        if isinstance(error, ResyncError) or not isinstance(error, Exception):
            return error
        name = self.name
        if isinstance(error, TimeoutError):  # asyncpg's command_timeout
            mapped: ResyncError = DatabaseStatementTimeoutError(
                f"Database statement timed out (pool '{name}'); the connection was "
                "discarded. Raise DB_POOL_STATEMENT_TIMEOUT if the statement is meant "
                "to run that long",
                pool_name=name,
            )
        elif _lost(error):
            mapped = DatabaseConnectionLostError(
                f"Database operation failed: the connection to the server broke "
                f"({describe_sql_error(error)}) (pool '{name}'); retry when the server answers",
                pool_name=name,
            )
        elif _is_driver_error(error):
            mapped = self.errors.base(
                f"Database operation failed: {describe_sql_error(error)} (pool '{name}')",
                pool_name=name,
            )
        else:
            return error
        mapped.hides_cause = True  # the driver's text may quote a bound value
        return mapped


def _in_transaction(driver: Any) -> bool:
    check = getattr(driver, "is_in_transaction", None)  # asyncpg
    if callable(check):
        return bool(check())
    return bool(getattr(driver, "in_transaction", False))  # aiosqlite


async def _roll_back(driver: Any) -> None:
    if callable(getattr(driver, "is_in_transaction", None)):
        await driver.execute("ROLLBACK")  # asyncpg: a transaction the caller began
    else:
        await driver.rollback()
