"""The health round trip every pool shares (a mixin of ``ConnectionPool``).

``check_health()`` leases a connection through the normal admission path and
runs the backend's ``_ping`` on it (``SELECT 1``, ``PING``, a request), all
under ``connection_timeout``. It never raises: a failure or a timeout comes
back as an unhealthy :class:`HealthResult` with a scrubbed error string.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

from resync.core.pools.kernel.state import PoolState

if TYPE_CHECKING:
    from resync.core.pools.kernel.config import ConnectionPoolConfig
    from resync.core.pools.kernel.stats import ConnectionPoolStats

__all__ = ["HealthResult", "PoolHealthChecks"]


@dataclass(frozen=True, slots=True)
class HealthResult:
    """Outcome of one health round trip: ``latency`` in seconds, ``error`` scrubbed."""

    healthy: bool
    latency: float
    error: str | None = None
    checked_at: datetime | None = None


class _HealthHost(Protocol):
    """What the health methods use of their pool (the methods' self-type)."""

    config: ConnectionPoolConfig
    stats: ConnectionPoolStats

    @property
    def state(self) -> PoolState: ...
    def scrub(self, error: object) -> str: ...
    def get_connection(self) -> AbstractAsyncContextManager[Any]: ...
    async def ping(self, connection: Any) -> None: ...
    async def _health_probe(self) -> None: ...
    async def check_health(self) -> HealthResult: ...


class PoolHealthChecks:
    """Health methods of :class:`~resync.core.pools.kernel.pool.ConnectionPool`.

    A mixin without state: each method is typed against :class:`_HealthHost`,
    the public members of the pool it runs on.
    """

    async def check_health(self: _HealthHost) -> HealthResult:
        """One real round trip under ``connection_timeout``; never raises.

        Records ``stats.last_health_check``. A pool that is not ready is
        reported unhealthy without any I/O. Cancellation propagates.
        """
        state = self.state
        if state is not PoolState.READY:
            return HealthResult(False, 0.0, f"pool is {state.value}")
        start = perf_counter()
        error: str | None = None
        try:
            async with asyncio.timeout(self.config.connection_timeout):
                await self._health_probe()
        except TimeoutError:
            error = f"no answer within {self.config.connection_timeout:g}s"
        except Exception as exc:
            error = f"{type(exc).__name__}: {self.scrub(exc)}"
        now = datetime.now(UTC)
        self.stats.last_health_check = now
        return HealthResult(error is None, perf_counter() - start, error, now)

    async def health_check(self: _HealthHost) -> bool:
        """True if a real round trip succeeded within ``connection_timeout``.

        Never raises (cancellation excepted); records ``last_health_check``.
        """
        return (await self.check_health()).healthy

    async def _health_probe(self: _HealthHost) -> None:
        """Lease a connection and ``ping`` it; backends may probe differently."""
        async with self.get_connection() as conn:
            await self.ping(conn)
