"""An in-memory backend: the base pool's lease path with no I/O at all.

Useful to test code that takes a ``ConnectionPool`` without a server, to
measure the cost of admission alone (``benchmarks/bench_admission.py``) and to
drive the base pool's fairness and cancellation tests.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from resync.core.pools.base_pool import ConnectionPool, ConnectionPoolConfig

__all__ = ["InMemoryConnection", "InMemoryPool"]

_ids = itertools.count(1)


@dataclass(eq=False)
class InMemoryConnection:
    """A fake connection: an id, a use counter and a closed flag."""

    id: int = field(default_factory=lambda: next(_ids))
    uses: int = 0
    closed: bool = False
    broken: bool = False


class InMemoryPool(ConnectionPool[InMemoryConnection]):
    """A pool of :class:`InMemoryConnection` objects.

    ``connect_delay`` makes each new connection take that long (an ``await``
    that can be cancelled or time out); ``fail_setup`` makes ``initialize()``
    raise it. A connection whose lease ended with an exception is discarded,
    as a real backend must do when the connection's state is unknown.
    """

    backend = "memory"

    def __init__(
        self,
        config: ConnectionPoolConfig,
        *,
        connect_delay: float = 0.0,
        fail_setup: Exception | None = None,
    ) -> None:
        super().__init__(config)
        self.connect_delay = connect_delay
        self.fail_setup = fail_setup
        self._idle: list[InMemoryConnection] = []
        self.open_connections: set[InMemoryConnection] = set()

    async def _setup_pool(self) -> None:
        if self.fail_setup is not None:
            raise self.fail_setup
        for _ in range(self.config.min_size):
            self._idle.append(await self._connect())

    async def _connect(self) -> InMemoryConnection:
        if self.connect_delay:
            await asyncio.sleep(self.connect_delay)
        conn = InMemoryConnection()
        self.open_connections.add(conn)
        self.stats.connection_creations += 1
        return conn

    def _discard(self, conn: InMemoryConnection) -> None:
        if not conn.closed:
            conn.closed = True
            self.open_connections.discard(conn)
            self.stats.connection_closures += 1

    async def _acquire_connection(self, timeout: float) -> InMemoryConnection:
        idle = self._idle
        if idle:
            conn = idle.pop()
        else:
            # Only a new connection pays for a timer; reuse stays timer-free.
            async with asyncio.timeout(timeout):
                conn = await self._connect()
        conn.uses += 1
        return conn

    async def _release_connection(
        self, connection: InMemoryConnection, error: BaseException | None
    ) -> None:
        if error is not None or connection.broken or self._shutdown:
            self._discard(connection)
        else:
            self._idle.append(connection)

    async def _close_pool(self) -> None:
        while self._idle:
            self._discard(self._idle.pop())

    async def _ping(self, connection: InMemoryConnection) -> None:
        if connection.closed or connection.broken:
            raise ConnectionError("in-memory connection is closed")

    def _idle_connections(self) -> int:
        return len(self._idle)
