"""The survival rules every fault scenario checks, and the figures it observed.

The rules (issue "step 7"):

1. every lease either succeeds or raises a typed resync error
   (:class:`~resync.core.exceptions.ResyncError`) within
   ``connection_timeout * 1.1 + 50 ms`` -- :meth:`Survival.lease`;
2. no slot and no server connection is leaked -- the scenarios count server
   connections (``pg_stat_activity`` by application name, Redis ``CLIENT
   LIST`` by client name) and the fault proxy's sockets;
3. the pool recovers within 2 s of the fault ending -- :meth:`Survival.recovers`;
4. no reply reaches the wrong caller -- every lease body sends a token of its
   own and checks that the answer carries it.

Each scenario's worst lease (as a fraction of the bound) and its recovery
time are kept in :data:`OBSERVED`, and printed at the end of the run by
``tests/faults/conftest.py``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from resync.core.exceptions import ResyncError
from resync.core.pools.base_pool import ConnectionPool

__all__ = ["OBSERVED", "RECOVERY_WINDOW", "Attempt", "Observed", "Survival", "token"]

#: The pool must serve again within this many seconds of a fault ending.
RECOVERY_WINDOW = 2.0

Body = Callable[[Any], Awaitable[object]]


def token() -> str:
    """A value no other lease sends: its echo proves the reply is ours."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Attempt:
    """How one lease ended: ``error`` is None when it succeeded."""

    elapsed: float
    error: ResyncError | None = None
    result: object = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Observed:
    """One scenario's figures: leases made, worst time against the bound, recovery."""

    bound: float = 0.0
    leases: int = 0
    failures: int = 0
    worst: float = 0.0
    recovery: float | None = None
    errors: set[str] = field(default_factory=set)


#: Scenario (test node id) -> what it observed.
OBSERVED: dict[str, Observed] = {}


def _scenario() -> str:
    current = os.environ.get("PYTEST_CURRENT_TEST", "?")
    return current.rsplit(" (", 1)[0]


class Survival:
    """Leases a pool under a fault and checks the survival rules on each.

    ``timeout`` is the figure the bound is derived from: the pool's
    ``connection_timeout`` (the scenarios set the driver's statement timeout
    to the same value, so one bound covers queueing, connecting and talking).
    """

    def __init__(
        self,
        pool: ConnectionPool[Any],
        timeout: float | None = None,
        lease: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
    ) -> None:
        self.pool = pool
        #: What one lease is (default ``pool.get_connection``; e.g. ``pool.driver_connection``).
        self._lease = pool.get_connection if lease is None else lease
        self.timeout = pool.config.connection_timeout if timeout is None else timeout
        self.bound = self.timeout * 1.1 + 0.05
        self.observed = OBSERVED.setdefault(_scenario(), Observed())
        self.observed.bound = self.bound

    async def lease(self, body: Body | None = None) -> Attempt:
        """One lease running ``body(connection)``; asserts rule 1 and returns how it ended.

        Raises ``AssertionError`` if the lease took longer than the bound or
        failed with anything but a :class:`ResyncError`.
        """
        started = perf_counter()
        result: object = None
        error: ResyncError | None = None
        try:
            async with self._lease() as connection:
                if body is not None:
                    result = await body(connection)
        except ResyncError as exc:
            error = exc
        except Exception as exc:
            raise AssertionError(
                f"lease of pool '{self.pool.name}' failed with an untyped "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        elapsed = perf_counter() - started
        self._record(elapsed, error)
        assert elapsed <= self.bound, (
            f"lease of pool '{self.pool.name}' took {elapsed:.3f}s, over the bound "
            f"{self.bound:.3f}s ({type(error).__name__ if error else 'succeeded'})"
        )
        return Attempt(elapsed, error, result)

    async def leases(self, count: int, body: Body | None = None) -> list[Attempt]:
        """``count`` concurrent :meth:`lease` calls."""
        return list(await asyncio.gather(*(self.lease(body) for _ in range(count))))

    async def recovers(self, body: Body | None = None) -> float:
        """After a fault ended: lease until one succeeds; assert it took <= 2 s (rule 3).

        Every attempt is held to rule 1 as well. Returns the recovery time.
        """
        started = perf_counter()
        while True:
            attempt = await self.lease(body)
            waited = perf_counter() - started
            if attempt.ok:
                self.observed.recovery = max(self.observed.recovery or 0.0, waited)
                return waited
            assert waited <= RECOVERY_WINDOW, (
                f"pool '{self.pool.name}' still failing {waited:.2f}s after the fault "
                f"ended: {attempt.error}"
            )
            await asyncio.sleep(0.05)

    def _record(self, elapsed: float, error: ResyncError | None) -> None:
        observed = self.observed
        observed.leases += 1
        observed.worst = max(observed.worst, elapsed)
        if error is not None:
            observed.failures += 1
            observed.errors.add(type(error).__name__)
