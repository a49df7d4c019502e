"""Error messages of the shared lease path (a mixin of ``ConnectionPool``).

Each builds the backend family's exception (``self.errors``) with a message
that names the pool, gives the figures, and says what to change. The mixin has
no state: its methods are typed against :class:`_ErrorHost`, the public
members of the pool they run on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

from resync.core.exceptions import (
    BackendUnavailableError,
    DeadlineExceededError,
    ErrorFamily,
    PoolClosedError,
    PoolError,
    PoolNotInitializedError,
    PoolOverloadedError,
    PoolTimeoutError,
    ResyncError,
)

if TYPE_CHECKING:
    from resync.core.deadlines import Deadline
    from resync.core.pools.kernel.admission import AdmissionGate
    from resync.core.pools.kernel.config import ConnectionPoolConfig
    from resync.core.pools.kernel.stats import ConnectionPoolStats
    from resync.core.resilience import CircuitBreaker

__all__ = ["PoolErrorMessages"]


class _ErrorHost(Protocol):
    """What the error factories read of their pool."""

    errors: ClassVar[ErrorFamily]
    breaker_outcome_per_lease: ClassVar[bool]
    config: ConnectionPoolConfig
    stats: ConnectionPoolStats
    circuit_breaker: CircuitBreaker | None

    @property
    def name(self) -> str: ...
    @property
    def gate(self) -> AdmissionGate: ...
    def scrub(self, error: object) -> str: ...
    def _is_backend_failure(self, error: BaseException) -> bool: ...
    def _is_connect_failure(self, error: BaseException) -> bool: ...
    def _is_release_failure(self, error: BaseException) -> bool: ...
    def _map_error(self, error: BaseException) -> BaseException: ...
    def _timeout_error(
        self, waited: float, cause: BaseException | None = None
    ) -> PoolTimeoutError: ...


class PoolErrorMessages:
    """Factories for the errors the lease path raises, and its failure accounting."""

    def _record_outcome(
        self: _ErrorHost, error: BaseException | None, release_error: BaseException | None = None
    ) -> None:
        """Tell the circuit breaker how a lease ended (``error``: what ended its
        body; ``release_error``: what its return raised, e.g. a failed commit).

        A failure only when the backend failed (``_is_backend_failure``: a lost
        connection, a reset); no outcome at all for a cancelled lease, the
        caller's own timeout (a bare ``TimeoutError``, e.g. ``asyncio.timeout``
        around a statement) or a resync error from elsewhere (another pool's);
        any other end -- bad SQL, a constraint violation, a WRONGTYPE reply,
        the caller's own exception -- means the backend answered: a success.
        """
        breaker = self.circuit_breaker
        if breaker is None or not self.breaker_outcome_per_lease:
            return
        if error is None and release_error is not None:
            if self._is_release_failure(release_error):
                breaker.record_failure()
                return
            error = release_error
        if error is None:
            breaker.record_success()
        elif (
            not isinstance(error, Exception)
            or type(error) is TimeoutError
            or isinstance(error, ResyncError)
        ):
            return
        elif self._is_backend_failure(error):
            breaker.record_failure()
        else:
            breaker.record_success()

    def _on_acquire_error(self: _ErrorHost, exc: BaseException, elapsed: float) -> BaseException:
        """Count a failed checkout and map it to the family (cancellation passes)."""
        if not isinstance(exc, Exception):
            return exc
        if isinstance(exc, PoolError):
            return exc
        if isinstance(exc, TimeoutError):
            # The lease ran out of time while connecting or validating: a lease
            # timeout like any other (pool_exhaustions, the timeouts metric),
            # not a connection error -- the connection may be fine.
            self.stats.pool_exhaustions += 1
            if (
                self.circuit_breaker is not None
                and self.breaker_outcome_per_lease
                and self._is_backend_failure(exc)
            ):
                self.circuit_breaker.record_failure()
            return self._timeout_error(elapsed, cause=exc)
        self.stats.connection_errors += 1
        if (
            self.circuit_breaker is not None
            and self.breaker_outcome_per_lease
            and self._is_connect_failure(exc)
        ):
            self.circuit_breaker.record_failure()
        if isinstance(exc, TimeoutError):
            return self._timeout_error(elapsed, cause=exc)
        mapped = self._map_error(exc)
        if mapped is exc:
            return self.errors.base(
                f"Could not get a connection from pool '{self.name}': {self.scrub(exc)}",
                pool_name=self.name,
            )
        return mapped

    def _timeout_error(
        self: _ErrorHost, waited: float, cause: BaseException | None = None
    ) -> PoolTimeoutError:
        gate = self.gate
        detail = f" ({self.scrub(cause)})" if cause is not None and str(cause) else ""
        return self.errors.timeout(
            f"Timeout acquiring connection from pool '{self.name}' after "
            f"{self.config.connection_timeout:g}s (waited {waited:.3f}s; "
            f"{self.stats.active_connections} active of max {gate.capacity}, "
            f"{gate.waiting} waiting){detail}. Raise max_size or connection_timeout, "
            "or hold connections for less time",
            pool_name=self.name,
        )

    def _deadline_error(self: _ErrorHost, deadline: Deadline, stage: str) -> DeadlineExceededError:
        """The family's deadline error: ``stage`` says where the time ran out
        ("before the lease", "while waiting for a connection", "during the lease")."""
        return self.errors.deadline(
            f"Deadline exceeded {stage} on pool '{self.name}': the caller's deadline "
            f"({deadline.describe()}) ran out, not the pool (connection_timeout "
            f"{self.config.connection_timeout:g}s). Give the caller more time "
            "(resync.deadline(), X-Request-Timeout) or do less within it",
            pool_name=self.name,
        )

    def _closed_error(self: _ErrorHost) -> PoolClosedError:
        return self.errors.closed(
            f"Pool '{self.name}' is shutdown and accepts no new leases; "
            "create and initialize a new pool",
            pool_name=self.name,
        )

    def _not_initialized_error(self: _ErrorHost) -> PoolNotInitializedError:
        return self.errors.not_initialized(
            f"Pool '{self.name}' not initialized: call 'await pool.initialize()' "
            "(or use 'async with pool') before leasing",
            pool_name=self.name,
        )

    def _overloaded_error(self: _ErrorHost, reason: str | None = None) -> PoolOverloadedError:
        """The lease was refused at once; ``reason`` is the gate's (``AdmissionGate.refusal``)."""
        if reason is None:
            reason = (
                f"{self.gate.waiting} callers already waiting (max_waiting="
                f"{self.config.max_waiting}); retry later or raise max_waiting/max_size"
            )
        return self.errors.overloaded(
            f"Pool '{self.name}' overloaded: {reason}", pool_name=self.name
        )

    def _dropped_error(self: _ErrorHost, waited: float) -> PoolOverloadedError:
        """Queue management failed a queued lease after ``waited`` seconds."""
        gate = self.gate
        return self.errors.overloaded(
            f"Pool '{self.name}' overloaded: dropped from the queue after waiting {waited:.3f}s "
            f"(queue management: no queued caller got a connection within "
            f"queue_target={gate.queue_target:g}s for a whole queue_interval="
            f"{gate.queue_interval:g}s; {gate.waiting} still waiting); retry later, or raise "
            "max_size or queue_target",
            pool_name=self.name,
        )

    def _unavailable_error(self: _ErrorHost) -> BackendUnavailableError:
        breaker = self.circuit_breaker
        retry = breaker.retry_after() if breaker is not None else 0.0
        return self.errors.unavailable(
            f"Pool '{self.name}' backend unavailable: circuit breaker is open after repeated "
            f"failures; failing fast, next probe in {retry:.1f}s",
            pool_name=self.name,
        )
