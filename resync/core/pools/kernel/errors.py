"""Error messages of the shared lease path (a mixin of ``ConnectionPool``).

Each builds the backend family's exception (``self.errors``) with a message
that names the pool, gives the figures, and says what to change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from resync.core.exceptions import (
    BackendUnavailableError,
    ErrorFamily,
    PoolClosedError,
    PoolNotInitializedError,
    PoolOverloadedError,
    PoolTimeoutError,
)

if TYPE_CHECKING:
    from resync.core.pools.kernel.admission import AdmissionGate
    from resync.core.pools.kernel.config import ConnectionPoolConfig
    from resync.core.pools.kernel.stats import ConnectionPoolStats
    from resync.core.resilience import CircuitBreaker

__all__ = ["PoolErrorMessages"]


class PoolErrorMessages:
    """Factories for the errors the lease path raises."""

    errors: ClassVar[ErrorFamily]

    if TYPE_CHECKING:
        config: ConnectionPoolConfig
        stats: ConnectionPoolStats
        circuit_breaker: CircuitBreaker | None
        _gate: AdmissionGate

        @property
        def name(self) -> str: ...
        def _scrub(self, error: object) -> str: ...

    def _timeout_error(self, waited: float, cause: BaseException | None = None) -> PoolTimeoutError:
        gate = self._gate
        detail = f" ({self._scrub(cause)})" if cause is not None and str(cause) else ""
        return self.errors.timeout(
            f"Timeout acquiring connection from pool '{self.name}' after "
            f"{self.config.connection_timeout:g}s (waited {waited:.3f}s; "
            f"{self.stats.active_connections} active of max {gate.capacity}, "
            f"{gate.waiting} waiting){detail}. Raise max_size or connection_timeout, "
            "or hold connections for less time",
            pool_name=self.name,
        )

    def _closed_error(self) -> PoolClosedError:
        return self.errors.closed(
            f"Pool '{self.name}' is shutdown and accepts no new leases; "
            "create and initialize a new pool",
            pool_name=self.name,
        )

    def _not_initialized_error(self) -> PoolNotInitializedError:
        return self.errors.not_initialized(
            f"Pool '{self.name}' not initialized: call 'await pool.initialize()' "
            "(or use 'async with pool') before leasing",
            pool_name=self.name,
        )

    def _overloaded_error(self) -> PoolOverloadedError:
        return self.errors.overloaded(
            f"Pool '{self.name}' overloaded: {self._gate.waiting} callers already waiting "
            f"(max_waiting={self.config.max_waiting}); retry later or raise max_waiting/max_size",
            pool_name=self.name,
        )

    def _unavailable_error(self) -> BackendUnavailableError:
        breaker = self.circuit_breaker
        retry = breaker.retry_after() if breaker is not None else 0.0
        return self.errors.unavailable(
            f"Pool '{self.name}' backend unavailable: circuit breaker is open after repeated "
            f"failures; failing fast, next probe in {retry:.1f}s",
            pool_name=self.name,
        )
