"""What a Redis lease holds: one driver connection and a client bound to it.

A :class:`ConnectionRecord` owns one ``redis.asyncio`` connection for the life
of the pool (the socket under it is opened, closed and reopened; the object
stays). Its :class:`LeasedRedis` client is an ordinary ``redis.asyncio.Redis``
whose "connection pool" is a :class:`LeasedConnectionPool`: a pool of exactly
that one connection. redis-py asks its pool for a connection around every
command, pipeline, pub/sub and lock, so all of them run on the leased
connection -- admission equals connections, and nothing a lease does can
queue inside the driver.

Commands issued concurrently on one leased client (``asyncio.gather``) take
turns on the connection, as with redis-py's single-connection client. A client
used after its lease ended fails with ``RuntimeError`` instead of writing to a
connection that another caller may hold by then.

Inside ``resync.deadline()`` (:meth:`LeasedConnectionPool.bind_deadline`) each
command's wait for its turn and the connection's socket timeouts (the write,
each read, a reconnect) are capped by the time left when the command starts;
a black-holed server answers no read, so the command ends at the deadline
(redis-py then closes the socket). A command started after the deadline fails
at once with the pool's ``RedisDeadlineExceededError``, sending nothing. A
pub/sub read given its own ``timeout=`` (or none: ``listen()``) keeps it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool

from resync.core.deadlines import Deadline
from resync.core.pools.kernel.deadlines import out_of_time
from resync.core.pools.kernel.pacing import expiry

__all__ = [
    "ConnectionRecord",
    "LeasedConnectionPool",
    "LeasedRedis",
    "disconnect",
    "peer_closed",
]

logger = logging.getLogger("resync.pool.redis")


def peer_closed(conn: AbstractConnection) -> bool:
    """Did the server (or the network) close this idle connection's socket?

    asyncio sees a FIN or RST on an idle socket at once and closes the
    transport; redis-py only finds out when the next command fails. redis-py
    has no public accessor for its stream writer, hence the ``getattr``.
    """
    writer = getattr(conn, "_writer", None)
    return writer is not None and writer.transport.is_closing()


async def disconnect(conn: AbstractConnection, label: str, scrub: Callable[[object], str]) -> None:
    """Close ``conn``'s socket without waiting for the peer; an error is logged
    at DEBUG (``label`` names the pool, ``scrub`` masks its secrets).

    Nothing here suspends, so a second cancellation cannot leave it half-open.
    """
    try:
        await conn.disconnect(nowait=True)
    except Exception as exc:
        logger.debug("%s: error closing a connection: %s", label, scrub(exc))


class LeasedConnectionPool:
    """The one-connection "pool" a leased client sees (duck-typed as redis-py's).

    Everything except checkout, return and close is delegated to the real
    driver pool (encoder, connection kwargs, retry settings...). Closing it is
    a no-op: the connection belongs to the resync pool, not to the client, so
    ``await client.aclose()`` inside a lease cannot close it under the pool.
    """

    def __init__(self, driver: ConnectionPool, connection: AbstractConnection, label: str) -> None:
        self._driver = driver
        self._connection = connection
        #: Names the pool in messages ("pool 'cache'").
        self.label = label
        self._turn = asyncio.Lock()
        self._turn_timeout = math.inf
        #: True while a lease holds the record; commands outside a lease are refused.
        self.active = False
        #: The lease's deadline (``resync.deadline()``), or None.
        self.deadline: Deadline | None = None
        self._deadline_error: Callable[[Deadline], BaseException] | None = None
        # (connection, socket_timeout, socket_connect_timeout) before the cap.
        self._uncapped: tuple[Any, Any, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not defined here.
        return getattr(self._driver, name)

    def __repr__(self) -> str:
        # redis-py puts the pool's repr into the client's: keep it free of secrets.
        state = "leased" if self.active else "not leased"
        return f"<LeasedConnectionPool {self.label} ({state})>"

    @property
    def busy(self) -> bool:
        """True while a command, pipeline or pub/sub is using the connection."""
        return self._turn.locked()

    def set_turn_timeout(self, seconds: float) -> None:
        """Bound how long a command waits for another one on the same lease."""
        self._turn_timeout = seconds

    async def get_connection(self, *_args: Any, **_kwargs: Any) -> AbstractConnection:
        """Take the connection for one command (or a pipeline/pub-sub until it is reset).

        Waits while another command of the same lease uses it, at most the
        pool's ``connection_timeout`` (a pipeline in WATCH mode or a pub/sub
        left open on the lease would otherwise deadlock the caller), then
        raises ``TimeoutError``. Cancelled while waiting, it takes no turn.
        Outside a lease it raises ``RuntimeError`` at once.
        """
        if not self.active:
            raise RuntimeError(
                f"this Redis client belongs to a lease of {self.label} that has ended; "
                "use the client only inside 'async with pool.get_connection() as client'"
            )
        if self.deadline is not None:
            return await self._take_within(self.deadline)
        turn = self._turn
        if not turn.locked():
            await turn.acquire()
            return self._connection
        try:
            async with asyncio.timeout(self._turn_timeout):
                await turn.acquire()
        except TimeoutError:
            raise TimeoutError(
                f"the leased connection of {self.label} stayed busy for "
                f"{self._turn_timeout:g}s (a pipeline or pub/sub still holds it?)"
            ) from None
        return self._connection

    # --- deadlines ------------------------------------------------------------------------

    def bind_deadline(self, deadline: Deadline, error: Callable[[Deadline], BaseException]) -> None:
        """Cap this lease's commands by ``deadline``; ``error(deadline)`` is the
        pool's deadline error for a command started after it."""
        self.deadline = deadline
        self._deadline_error = error

    def unbind_deadline(self) -> None:
        """The lease ended: its connection gets its own socket timeouts back."""
        self.deadline = None
        self._deadline_error = None
        uncapped, self._uncapped = self._uncapped, None
        if uncapped is not None:
            conn, timeout, connect_timeout = uncapped
            conn.socket_timeout = timeout
            conn.socket_connect_timeout = connect_timeout

    def _out_of_time(self, deadline: Deadline) -> BaseException:
        error = self._deadline_error
        if error is None:  # pragma: no cover - bound together with the deadline
            return TimeoutError(f"the deadline of a lease of {self.label} ran out")
        return error(deadline)

    async def _take_within(self, deadline: Deadline) -> AbstractConnection:
        """``get_connection`` under a deadline: the turn and the socket
        timeouts capped by the time left; past it, the deadline error."""
        if out_of_time(deadline):
            raise self._out_of_time(deadline)
        turn = self._turn
        if turn.locked():
            try:
                async with asyncio.timeout(min(self._turn_timeout, deadline.remaining())):
                    await turn.acquire()
            except TimeoutError:
                if out_of_time(deadline):
                    raise self._out_of_time(deadline) from None
                raise TimeoutError(
                    f"the leased connection of {self.label} stayed busy for "
                    f"{self._turn_timeout:g}s (a pipeline or pub/sub still holds it?)"
                ) from None
        else:
            await turn.acquire()
        left = deadline.remaining()
        if left <= 0:
            turn.release()
            raise self._out_of_time(deadline)
        conn: Any = self._connection
        uncapped = self._uncapped
        if uncapped is None or uncapped[0] is not conn:
            uncapped = self._uncapped = (conn, conn.socket_timeout, conn.socket_connect_timeout)
        _, timeout, connect_timeout = uncapped
        conn.socket_timeout = left if not timeout else min(timeout, left)
        conn.socket_connect_timeout = left if not connect_timeout else min(connect_timeout, left)
        return conn  # type: ignore[no-any-return]

    async def release(self, connection: AbstractConnection) -> None:
        """Hand the connection to the next command of the lease."""
        # A command that outlived its lease returns a connection the record no
        # longer has; its turn lock is gone with it.
        if connection is self._connection and self._turn.locked():
            self._turn.release()

    def rebind(self, connection: AbstractConnection) -> None:
        """Point at a fresh connection: new turn lock, not leased."""
        self.active = False
        self._connection = connection
        self._turn = asyncio.Lock()

    async def aclose(self) -> None:
        """No-op: the resync pool owns the connection."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        """No-op: the resync pool owns the connection."""


class LeasedRedis(Redis):
    """A ``redis.asyncio.Redis`` bound to one pooled connection during a lease."""

    def __repr__(self) -> str:
        return f"<LeasedRedis {self.connection_pool!r}>"


class ConnectionRecord:
    """One connection of the pool: the driver connection, its bound client, its
    age and idleness.

    When the pool closes a record's connection it swaps in a fresh, unconnected
    connection object (see :meth:`replace_connection`); the old object is
    never used again, so a command that outlived its lease cannot reopen a
    socket the pool would later hand to someone else.
    """

    __slots__ = ("adapter", "client", "conn", "expires_at", "last_used", "opened")

    def __init__(self, driver: ConnectionPool, conn: AbstractConnection, label: str) -> None:
        self.conn = conn
        self.adapter = LeasedConnectionPool(driver, conn, label)
        # The adapter stands in for redis-py's pool: it has every method the
        # client calls, and delegates the rest.
        self.client = LeasedRedis(connection_pool=self.adapter)  # type: ignore[arg-type]
        self.expires_at = math.inf
        self.last_used = 0.0
        #: True from a successful connect until the pool closes the record (even
        #: if redis-py already dropped the socket itself after an error).
        self.opened = False

    async def connect(
        self, timeout: float, max_lifetime: float, scrub: Callable[[object], str]
    ) -> None:
        """Open the socket within ``timeout`` and start its lifetime.

        On any failure (``TimeoutError``, the driver's error, cancellation) the
        socket is closed for certain and the error raised: interrupted
        mid-handshake a redis-py connection still looks connected (AUTH or
        SELECT maybe not sent).
        """
        try:
            async with asyncio.timeout(timeout):
                await self.conn.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await disconnect(self.conn, self.adapter.label, scrub)
            raise
        self.opened = True
        now = time.monotonic()
        self.expires_at = expiry(now, max_lifetime)
        self.last_used = now

    async def ping(self, ping: Callable[[Redis], Awaitable[None]], timeout: float) -> None:
        """``ping`` the client outside a lease, within ``timeout``."""
        self.adapter.active = True
        try:
            async with asyncio.timeout(timeout):
                await ping(self.client)
        finally:
            self.adapter.active = False

    def mark(self) -> None:
        """Make the pool close this connection when its lease returns it (or
        maintenance finds it idle), as for an expired ``max_lifetime``."""
        self.expires_at = -math.inf

    def replace_connection(self, conn: AbstractConnection) -> AbstractConnection:
        """Swap in ``conn`` (not yet connected); return the old connection object."""
        old, self.conn = self.conn, conn
        self.adapter.rebind(conn)
        self.opened = False
        self.expires_at = math.inf
        return old
