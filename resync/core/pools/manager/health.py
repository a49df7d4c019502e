"""Background health of each pool: healthy, degraded or down.

One task per pool runs a real round trip every ``health_check_interval``
seconds (jittered by the kernel's probe rule, ``pacing.jittered``: +-10%, so
pools and replicas do not probe in step).
Each check is bounded by the pool's ``connection_timeout``, so a hanging
backend delays only its own task. The state moves:

- ``healthy``: the last check succeeded;
- ``degraded``: the last check failed, fewer than ``down_after`` in a row;
- ``down``: ``down_after`` checks in a row failed (or the circuit is open).

An optional pool that could not open at start begins ``down`` and its task
first keeps opening it (:meth:`HealthMonitor.start_opening`): exponential
backoff with full jitter from 0.5 s up to 30 s between attempts, each attempt
bounded by the pool's own connect timeout, until it opens; then the checks
above begin. A change of state is logged once, not every tick. A failed check also counts
as a failure for the pool's circuit breaker, so a dead backend fails fast for
callers too; a later successful check (the half-open probe) closes it again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_never, wait_random_exponential

from resync.core.exceptions import PoolClosedError
from resync.core.pools.kernel.loops import start_task, stop_task
from resync.core.pools.kernel.pacing import jittered
from resync.core.pools.kernel.pool import ConnectionPool, HealthResult

__all__ = ["HealthMonitor", "HealthState", "PoolHealth"]

logger = logging.getLogger("resync.manager")


class HealthState(StrEnum):
    """Health of one pool as seen by the background checks."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass
class PoolHealth:
    """The last known health of one pool."""

    name: str
    required: bool
    state: HealthState = HealthState.HEALTHY
    last_error: str | None = None
    last_check: datetime | None = None
    last_latency: float | None = None
    consecutive_failures: int = 0
    checks: int = 0
    changes: list[tuple[datetime, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "required": self.required,
            "last_error": self.last_error,
            "last_check": self.last_check.isoformat() if self.last_check else None,
            "last_latency_ms": round(self.last_latency * 1e3, 3)
            if self.last_latency is not None
            else None,
            "consecutive_failures": self.consecutive_failures,
            "checks": self.checks,
        }


class HealthMonitor:
    """Runs and records health checks for one pool."""

    def __init__(self, pool: ConnectionPool[Any], health: PoolHealth, *, down_after: int = 3):
        self.pool = pool
        self.health = health
        self.down_after = down_after
        self.task: asyncio.Task[None] | None = None

    def record(self, result: HealthResult, breaker_failures_before: int | None = None) -> None:
        """Fold one check result into the pool's state; log only changes.

        ``breaker_failures_before`` is the breaker's failure count before the
        check: if the lease path already counted this failure, it is not
        counted twice.
        """
        health = self.health
        health.checks += 1
        health.last_check = result.checked_at or datetime.now(UTC)
        health.last_latency = result.latency
        if result.healthy:
            health.consecutive_failures = 0
            health.last_error = None
            new = HealthState.HEALTHY
        else:
            health.consecutive_failures += 1
            health.last_error = result.error
            breaker = self.pool.circuit_breaker
            breaker_open = breaker is not None and breaker.state.value == "open"
            down = health.consecutive_failures >= self.down_after or breaker_open
            new = HealthState.DOWN if down else HealthState.DEGRADED
            already = (
                breaker is not None
                and breaker_failures_before is not None
                and breaker.total_failures > breaker_failures_before
            )
            if breaker is not None and not breaker_open and not already:
                breaker.record_failure()
        if new is not health.state:
            old = health.state
            health.state = new
            health.changes.append((health.last_check, new.value))
            del health.changes[:-20]
            log = logger.info if new is HealthState.HEALTHY else logger.warning
            log(
                "pool '%s' is %s (was %s)%s",
                health.name,
                new.value,
                old.value,
                f": {health.last_error}" if health.last_error else "",
            )

    async def check_now(self) -> bool:
        """One check, recorded; bounded by the pool's timeout; never raises."""
        breaker = self.pool.circuit_breaker
        before = breaker.total_failures if breaker is not None else None
        result = await self.pool.check_health()
        self.record(result, before)
        return result.healthy

    def start(self) -> None:
        """Start the periodic task (no-op when the interval is 0)."""
        interval = self.pool.config.health_check_interval
        if interval > 0 and self.task is None:
            self.task = start_task(self._run(interval), name=f"resync-health-{self.pool.name}")

    #: Backoff between attempts to open a pool that failed to open (seconds).
    OPEN_BACKOFF_INITIAL = 0.5
    OPEN_BACKOFF_MAX = 30.0

    def start_opening(self, error: str) -> None:
        """The pool failed to open with ``error``: mark it down and keep opening it.

        The task retries ``pool.initialize()`` with backoff until it succeeds
        (then the state turns healthy and the periodic checks start) or the
        monitor is stopped (``stop()`` cancels it; a half-done attempt closes
        whatever it opened, the pool's own rule).
        """
        health = self.health
        health.state = HealthState.DOWN
        health.last_error = error
        health.consecutive_failures = 1
        health.changes.append((datetime.now(UTC), HealthState.DOWN.value))
        if self.task is None:
            self.task = start_task(self._open(), name=f"resync-open-{self.pool.name}")

    async def _open(self) -> None:
        pool = self.pool

        def failed(state: Any) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            self.health.consecutive_failures += 1
            self.health.last_error = pool.scrub(error) if error is not None else None
            self.health.last_check = datetime.now(UTC)
            logger.info(
                "pool '%s' still cannot open (attempt %d): %s",
                pool.name,
                state.attempt_number,
                self.health.last_error,
            )

        retrying = AsyncRetrying(
            stop=stop_never,
            wait=wait_random_exponential(
                multiplier=self.OPEN_BACKOFF_INITIAL, max=self.OPEN_BACKOFF_MAX
            ),
            # A closed pool (shutdown) will never open: stop trying.
            retry=retry_if_exception(
                lambda exc: isinstance(exc, Exception) and not isinstance(exc, PoolClosedError)
            ),
            before_sleep=failed,
            reraise=True,
        )
        # The first attempt already failed at start: wait before the next one.
        await asyncio.sleep(jittered(self.OPEN_BACKOFF_INITIAL))
        await retrying(pool.initialize)
        logger.info("pool '%s' opened in the background", pool.name)
        await self.check_now()
        interval = pool.config.health_check_interval
        if interval > 0:
            await self._run(interval)

    async def _run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(jittered(interval))
            try:
                await self.check_now()
            except Exception:  # never let one bad check end the loop
                logger.exception("pool '%s': health check crashed", self.pool.name)

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended (kernel ``stop_task``).

        Idempotent. If the caller is cancelled while waiting, the cancellation
        propagates (the task was cancelled and ends on its own).
        """
        task, self.task = self.task, None
        await stop_task(task)
