"""Database statements under the caller's deadline (``resync.deadline()``).

The kernel caps the lease's checkout by the time left
(:mod:`resync.core.pools.kernel.deadlines`); this module bounds what runs on
the leased connection afterwards. The tool is a client-side cut: at the
deadline the lease's timer terminates the driver connection
(asyncpg's ``Connection.terminate()``: the socket is closed at once, no
goodbye). The statement in flight, if any, fails at once; so does any later
one; the lease ends with the pool's
:class:`~resync.core.exceptions.DatabaseDeadlineExceededError` (a clean exit
after the cut too: nothing is committed), and the connection is discarded,
never reused -- the server rolls back a session whose socket closed.

Why not the alternatives:

- asyncpg's per-call ``timeout=`` would be exact, but SQLAlchemy never
  passes one: its adapter calls the driver with the connection's
  ``command_timeout`` only, and changing that per lease means writing
  asyncpg's private settings under SQLAlchemy.
- ``SET LOCAL statement_timeout`` costs a round trip per lease, and bounds
  only the server's work: a black-holed network or a server that stopped
  answering still holds the client until the driver's own timeout.
- ``asyncio.timeout`` around the lease body would cancel the caller's own
  code too, not just its statements.

The cut works the same for the three lease kinds (``AsyncSession``,
``connection()``'s ``AsyncConnection``, ``driver_connection()``) since it
acts on the driver connection under each. A ``COMMIT`` in flight at the
deadline fails as :class:`~resync.core.exceptions.DatabaseCommitUnknownError`
(the server may have committed it): that, not the deadline error, is what the
caller must know. SQLite (aiosqlite) has no network to black-hole: its
statements are not cut (only the checkout is capped). A test sandbox's shared
connection (:mod:`resync.testing`) is never cut either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

__all__ = ["deadline_abort"]

logger = logging.getLogger("resync.pool")


def deadline_abort(connection: object) -> Callable[[], object] | None:
    """The callable that cuts ``connection`` (a leased ``AsyncSession``,
    ``AsyncConnection`` or driver connection) off at the deadline, or ``None``
    when its driver has nothing to cut (SQLite).

    No ``await`` and no I/O: it runs from the lease's timer on the loop.
    """
    driver = _driver_of(connection)
    terminate = getattr(driver, "terminate", None)  # asyncpg
    if not callable(terminate) or getattr(driver, "is_closed", lambda: False)():
        return None
    return terminate  # type: ignore[no-any-return]


def _driver_of(connection: object) -> Any:
    if isinstance(connection, AsyncSession):
        bind = connection.bind
        if not isinstance(bind, AsyncConnection):
            return None
        connection = bind
    if isinstance(connection, AsyncConnection):
        sync = connection.sync_connection
        if sync is None or sync.invalidated or sync.closed:
            return None
        return sync.connection.driver_connection
    return connection  # driver_connection(): the driver's own
