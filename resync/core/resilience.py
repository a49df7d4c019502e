"""Circuit breaker and retry policy for the pools.

Why not a library: pybreaker is built for threads (its async path needs
Tornado), aiobreaker has had no release since 2020, and purgatory keeps its
state behind an async storage API and raises its own exceptions. A pool needs
a breaker whose ``allow()`` is a synchronous O(1) check on the lease hot path
(no ``await`` when closed), whose outcomes are reported by the pool itself, and
whose state lives in the pool's stats. That is ~100 lines, written here.

States::

    closed ──(failure_threshold consecutive failures)──▶ open
    open ──(recovery_timeout elapsed)──▶ half_open
    half_open ──(success_threshold successes)──▶ closed
    half_open ──(any failure)──▶ open

While open, ``allow()`` is False: a lease fails at once with the pool family's
"backend unavailable" error and no traffic reaches the backend. Half-open admits
at most ``half_open_max_calls`` probes per ``recovery_timeout``; if no probe
reports back in that time (a caller was cancelled), new probes are admitted.
A pool's background work (a refill up to ``min_size``) asks
``allow_background()``: the same answer, without counting a refusal as a
rejected call, so an open breaker also stops the pool's own reconnects and a
refill may be the half-open probe.

Every pool has a breaker by default, with its backend's thresholds
(:data:`BACKEND_BREAKER_DEFAULTS`: a database or Redis server is probed again
after 1 s, an upstream HTTP API after 30 s); ``resync.settings`` sets them per
backend (``DB_BREAKER_*``, ``REDIS_BREAKER_*``, ``HTTP_BREAKER_*``).

:class:`RetryPolicy` retries an operation with exponential backoff and full
jitter (tenacity's ``wait_random_exponential``). It never decides on its own
what is safe to retry: the caller passes ``retry_if``, because only the caller
knows whether a failed attempt may have reached the backend (the HTTP pool
retries connect failures always, dropped connections only for idempotent
methods). The first attempt runs without tenacity, so a success costs nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeAlias, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

__all__ = [
    "BACKEND_BREAKER_DEFAULTS",
    "BreakerSpec",
    "BreakerState",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "RetryPolicy",
    "build_circuit_breaker",
]

T = TypeVar("T")

logger = logging.getLogger("resync.resilience")


class BreakerState(StrEnum):
    """The three states of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: Numeric codes for metrics (Prometheus gauges need numbers).
STATE_CODES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """Thresholds of a :class:`CircuitBreaker` (durations in seconds)."""

    failure_threshold: int = 5
    recovery_timeout: float = 30.0
    half_open_max_calls: int = 1
    success_threshold: int = 1

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if not self.recovery_timeout > 0:
            raise ValueError("recovery_timeout must be > 0")
        if self.half_open_max_calls < 1:
            raise ValueError("half_open_max_calls must be >= 1")
        if self.success_threshold < 1:
            raise ValueError("success_threshold must be >= 1")


#: The thresholds ``circuit_breaker=True`` (every pool's default) means, per
#: backend label. A database or Redis server is either down or back: probing
#: it once a second costs the server one connect per second per pool and gives
#: callers their server back within a second of it returning. An upstream HTTP
#: API failing with 5xx is usually overloaded: it gets 30 s to recover.
BACKEND_BREAKER_DEFAULTS: Mapping[str, CircuitBreakerConfig] = MappingProxyType(
    {
        "database": CircuitBreakerConfig(failure_threshold=5, recovery_timeout=1.0),
        "redis": CircuitBreakerConfig(failure_threshold=5, recovery_timeout=1.0),
        "http": CircuitBreakerConfig(failure_threshold=5, recovery_timeout=30.0),
    }
)


class CircuitBreaker:
    """A consecutive-failure circuit breaker for one pool.

    Not a context manager on purpose: the pool calls :meth:`allow` before it
    queues, and :meth:`record_success` / :meth:`record_failure` when it knows
    the outcome, so the breaker never awaits and never sees user errors that
    are not the backend's fault.
    """

    __slots__ = (
        "_clock",
        "_consecutive_failures",
        "_half_open_successes",
        "_opened_at",
        "_probe_window_start",
        "_probes",
        "config",
        "name",
        "opened_count",
        "rejected_count",
        "state",
        "total_failures",
        "total_successes",
        "transitions",
    )

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config or CircuitBreakerConfig()
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._half_open_successes = 0
        self._opened_at = 0.0
        self._probe_window_start = 0.0
        self._probes = 0
        self.total_failures = 0
        self.total_successes = 0
        self.rejected_count = 0
        self.opened_count = 0
        self.transitions = 0

    def allow(self) -> bool:
        """May a call go to the backend now? (O(1), never awaits.)"""
        if self.state is BreakerState.CLOSED:
            return True
        if self._admit():
            return True
        self.rejected_count += 1
        return False

    def allow_background(self) -> bool:
        """:meth:`allow` for the pool's own work (a refill): a refusal is not
        counted as a rejected call. A True answer in half-open is the probe:
        report its outcome like any call's."""
        return self.state is BreakerState.CLOSED or self._admit()

    def _admit(self) -> bool:
        now = self._clock()
        if self.state is BreakerState.OPEN:
            if now - self._opened_at < self.config.recovery_timeout:
                return False
            self._move(BreakerState.HALF_OPEN)
            self._probe_window_start = now
            self._probes = 0
            self._half_open_successes = 0
        # half-open: a bounded number of probes per window
        if now - self._probe_window_start >= self.config.recovery_timeout:
            self._probe_window_start = now
            self._probes = 0
        if self._probes < self.config.half_open_max_calls:
            self._probes += 1
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until the breaker will admit a probe (0 when it admits now)."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self.config.recovery_timeout - (self._clock() - self._opened_at))
        return 0.0

    def record_success(self) -> None:
        """The backend answered: count it, and close a half-open breaker."""
        self.total_successes += 1
        if self.state is BreakerState.CLOSED:
            self._consecutive_failures = 0
            return
        if self.state is BreakerState.HALF_OPEN:
            self._half_open_successes += 1
            if self._half_open_successes >= self.config.success_threshold:
                self._consecutive_failures = 0
                self._move(BreakerState.CLOSED)

    def record_failure(self) -> None:
        """The backend failed: open after enough failures (at once if half-open)."""
        self.total_failures += 1
        self._consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED
            and self._consecutive_failures >= self.config.failure_threshold
        ):
            self._opened_at = self._clock()
            self.opened_count += 1
            self._move(BreakerState.OPEN)

    def reset(self) -> None:
        """Force the breaker closed (operator action or tests)."""
        self._consecutive_failures = 0
        self._half_open_successes = 0
        if self.state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED)

    def _move(self, new: BreakerState) -> None:
        old, self.state = self.state, new
        self.transitions += 1
        log = logger.warning if new is BreakerState.OPEN else logger.info
        log("circuit breaker of pool '%s': %s -> %s", self.name, old.value, new.value)

    def snapshot(self) -> dict[str, Any]:
        """State and counts, for pool stats and metrics."""
        return {
            "state": self.state.value,
            "consecutive_failures": self._consecutive_failures,
            "total_failures": self.total_failures,
            "total_successes": self.total_successes,
            "rejected": self.rejected_count,
            "opened": self.opened_count,
            "transitions": self.transitions,
            "retry_after": round(self.retry_after(), 3),
        }

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker '{self.name}' {self.state.value} "
            f"failures={self._consecutive_failures}/{self.config.failure_threshold}>"
        )


#: What a pool constructor accepts for its breaker: ``True`` (the backend's
#: defaults), ``False``/``None`` (none), a config, or a ready breaker (shared
#: or tuned).
BreakerSpec: TypeAlias = "CircuitBreaker | CircuitBreakerConfig | bool | None"


def build_circuit_breaker(
    name: str, spec: BreakerSpec, defaults: CircuitBreakerConfig | None = None
) -> CircuitBreaker | None:
    """Turn a pool's ``circuit_breaker=`` argument into a breaker (or ``None``).

    ``True`` builds one with ``defaults`` (a backend's entry of
    :data:`BACKEND_BREAKER_DEFAULTS`; ``None``: :class:`CircuitBreakerConfig`'s).
    """
    if spec is None or spec is False:
        return None
    if spec is True:
        return CircuitBreaker(name, defaults)
    if isinstance(spec, CircuitBreakerConfig):
        return CircuitBreaker(name, spec)
    if isinstance(spec, CircuitBreaker):
        return spec
    raise TypeError(
        "circuit_breaker must be True, False, None, a CircuitBreakerConfig or a "
        f"CircuitBreaker, got {type(spec).__name__}"
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded in attempts and time.

    - ``max_attempts``: total tries including the first (1 disables retries).
    - ``initial_backoff``: the first wait is drawn from ``[0, initial_backoff]``;
      each later window doubles, capped at ``max_backoff`` ("full jitter", so
      clients that failed together do not retry together).
    - ``max_elapsed``: stop retrying once this many seconds have passed since
      the first retry began (``None``: attempts alone bound it).
    """

    max_attempts: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    max_elapsed: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("initial_backoff and max_backoff must be >= 0")
        if self.max_elapsed is not None and self.max_elapsed <= 0:
            raise ValueError("max_elapsed must be > 0 (or None)")

    async def call(
        self,
        operation: Callable[[], Awaitable[T]],
        *,
        retry_if: Callable[[BaseException], bool],
        on_retry: Callable[[int, BaseException], None] | None = None,
    ) -> T:
        """Run ``operation``; retry it while it fails with an error ``retry_if`` accepts.

        Returns the first success; re-raises the last error once attempts or
        ``max_elapsed`` run out, or at once for an error ``retry_if`` refuses.
        ``on_retry(attempt, error)`` is called before each wait. Cancellation
        (during an attempt or a wait) propagates at once and is never retried.
        """
        try:
            return await operation()
        except Exception as exc:
            if self.max_attempts < 2 or not retry_if(exc):
                raise
            failed: BaseException = exc
        return await self.resume(operation, failed, retry_if=retry_if, on_retry=on_retry)

    async def resume(
        self,
        operation: Callable[[], Awaitable[T]],
        failed: BaseException,
        *,
        retry_if: Callable[[BaseException], bool],
        on_retry: Callable[[int, BaseException], None] | None = None,
    ) -> T:
        """Continue after a first attempt that failed with ``failed`` (already vetted).

        For callers that run the first attempt inline on their hot path; the
        attempts and waits then go exactly as in :meth:`call`.
        """
        replayed = False

        # tenacity runs the whole loop from attempt 1; the first attempt already
        # happened on the fast path, so its failure is replayed instead of re-run.
        async def attempt() -> T:
            nonlocal replayed
            if not replayed:
                replayed = True
                raise failed
            return await operation()

        def before_sleep(state: RetryCallState) -> None:
            if on_retry is not None and state.outcome is not None:
                error = state.outcome.exception()
                if error is not None:
                    on_retry(state.attempt_number, error)

        stop: stop_base = stop_after_attempt(self.max_attempts)
        if self.max_elapsed is not None:
            stop = stop | stop_after_delay(self.max_elapsed)
        retrying = AsyncRetrying(
            stop=stop,
            wait=wait_random_exponential(multiplier=self.initial_backoff, max=self.max_backoff),
            retry=retry_if_exception(retry_if),
            before_sleep=before_sleep,
            reraise=True,
        )
        return await retrying(attempt)
