"""The lease: one admission slot plus one driver connection, as ``async with``.

This is the hot path shared by every backend, written as a class rather than
``@asynccontextmanager`` because a generator-based context manager costs about
twice as much per lease. The rules it keeps:

- a slot is taken (at once, or after a strictly FIFO wait) before the backend is
  asked for a connection, so ``max_size`` bounds leases for every backend;
- a caller that cannot take a slot at once may be refused instead of queued
  (``max_waiting`` by priority, queue management: ``AdmissionGate.refusal``),
  or dropped from the queue by queue management, both as the pool's
  overloaded error; all of it on the waiting path, none on the fast path;
- the circuit breaker is asked before queuing, and a waiter handed a slot
  after the breaker opened fails fast too instead of connecting (one test of
  an attribute, on the waiting path only);
- whatever interrupts the lease -- timeout, backend error, cancellation at any
  ``await`` -- the slot is released exactly once (``finally``), and the backend
  is told how the lease ended so it can discard a connection in an unknown state;
- errors of the backend are mapped to the pool's error family on the way out,
  chained with ``from``;
- with ``leak_detection_threshold`` set, a lease held too long is reported
  (:mod:`resync.core.pools.kernel.leak_watch`); at 0 that costs one test per side;
- lease observers (:mod:`resync.core.pools.kernel.observe`) are told about every
  lease when it ends, granted or not; with none registered that costs one test
  of a tuple per lease, and the error paths only;
- the caller's ``resync.deadline()`` caps the acquire timeout, refuses a lease
  once it passed, and bounds the calls on the leased connection
  (:mod:`resync.core.pools.kernel.deadlines`); with none set that costs one
  contextvar read and four ``is None`` tests per lease (about 25 ns).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sys
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, NoReturn, Protocol, TypeVar

from resync.core.deadlines import DEADLINE
from resync.core.exceptions import DeadlineExceededError
from resync.core.pools.kernel import observe
from resync.core.pools.kernel.admission import CLOSED, DEFAULT, DROPPED, GRANTED, Priority
from resync.core.pools.kernel.deadlines import LeaseDeadline, Settled, out_of_time
from resync.core.pools.kernel.leak_watch import LeakWatch
from resync.core.pools.kernel.state import PoolState
from resync.core.resilience import BreakerState

if TYPE_CHECKING:
    from collections.abc import Callable

    from resync.core.deadlines import Deadline
    from resync.core.exceptions import (
        BackendUnavailableError,
        PoolClosedError,
        PoolOverloadedError,
        PoolTimeoutError,
    )
    from resync.core.metrics import Histogram
    from resync.core.pools.kernel.admission import AdmissionGate
    from resync.core.pools.kernel.config import ConnectionPoolConfig
    from resync.core.pools.kernel.stats import ConnectionPoolStats, WaitTimeWindow
    from resync.core.resilience import CircuitBreaker

__all__ = ["Lease", "LeaseHost", "LeaseKind", "LeaseState", "raise_mapped"]

logger = logging.getLogger("resync.pool")

T = TypeVar("T")


class LeaseState(enum.Enum):
    """Where a :class:`Lease` is in its single use."""

    NEW = "new"  #: not entered yet, or its entry failed: owns nothing
    HELD = "held"  #: entered: owns one admission slot and one connection
    DONE = "done"  #: left: owns nothing, cannot be entered again


_NEW, _HELD, _DONE = LeaseState.NEW, LeaseState.HELD, LeaseState.DONE
_READY = PoolState.READY
_OPEN = BreakerState.OPEN
_UNRELATED, _ENDED = Settled.UNRELATED, Settled.ENDED


class LeaseHost(Protocol[T]):
    """Exactly what a lease uses of its pool: the friend access of the hot path.

    :class:`~resync.core.pools.kernel.pool.ConnectionPool` is the one
    implementation. The private members are the pool's own state and its
    backend hooks; the lease reads them directly because a property or an
    extra call per lease is measurable in the lease-overhead benchmark.
    """

    config: ConnectionPoolConfig
    stats: ConnectionPoolStats
    circuit_breaker: CircuitBreaker | None
    wait_histogram: Histogram
    use_histogram: Histogram
    _state: PoolState
    _loop: asyncio.AbstractEventLoop | None
    _gate: AdmissionGate
    _wait_window: WaitTimeWindow
    _leak_threshold: float
    _has_acquire_hook: bool
    _has_release_hook: bool

    @property
    def name(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def state(self) -> PoolState: ...
    def check_usable(self) -> None: ...
    def _unavailable_error(self) -> BackendUnavailableError: ...
    def _overloaded_error(self, reason: str | None = None) -> PoolOverloadedError: ...
    def _dropped_error(self, waited: float) -> PoolOverloadedError: ...
    def _closed_error(self) -> PoolClosedError: ...
    def _deadline_error(self, deadline: Deadline, stage: str) -> DeadlineExceededError: ...
    def _bind_deadline(
        self, connection: Any, deadline: Deadline
    ) -> Callable[[], object] | None: ...
    def _is_backend_failure(self, error: BaseException) -> bool: ...
    def _timeout_error(
        self, waited: float, cause: BaseException | None = None
    ) -> PoolTimeoutError: ...
    def _on_acquire_error(self, exc: BaseException, elapsed: float) -> BaseException: ...
    def _record_outcome(
        self, error: BaseException | None, release_error: BaseException | None = None
    ) -> None: ...
    def _map_error(self, error: BaseException) -> BaseException: ...
    async def _acquire_connection(self, timeout: float) -> T: ...
    async def _release_connection(self, connection: T, error: BaseException | None) -> None: ...
    async def on_connection_acquired(self, connection: T) -> None: ...
    async def on_connection_released(self, connection: T) -> None: ...


class LeaseKind(Protocol[T]):
    """Another kind of connection from the same pool (a driver's own connection
    beside the pool's default): how to take one out, give it back, and name
    its errors. Everything else -- admission, timeouts, stats, histograms,
    leak detection, breaker, cancellation -- is the lease's, as for any lease.
    """

    async def acquire(self, timeout: float) -> T: ...
    async def release(self, connection: T, error: BaseException | None) -> None: ...
    def map_error(self, error: BaseException) -> BaseException: ...


class Lease(Generic[T]):
    """``async with pool.get_connection() as conn``: hold one connection.

    Entering waits at most ``connection_timeout`` for a slot and a connection
    and raises the pool family's timeout error otherwise; a cancelled caller
    never keeps a slot. Leaving returns the connection (the backend commits,
    rolls back or discards it) and frees the slot even if that return fails or
    is cancelled. A ``Lease`` object is single-use.
    """

    __slots__ = (
        "_conn",
        "_deadline",
        "_granted_at",
        "_kind",
        "_leak",
        "_pool",
        "_priority",
        "_started",
        "_state",
    )

    def __init__(
        self,
        pool: LeaseHost[Any],
        kind: LeaseKind[T] | None = None,
        priority: Priority = DEFAULT,
    ) -> None:
        self._pool = pool
        self._kind = kind  # None: the pool's own kind (its _acquire/_release hooks)
        # Read only on the waiting path (who is refused first under overload).
        self._priority = priority
        self._state = _NEW
        self._leak: LeakWatch | None = None
        self._deadline: LeaseDeadline | None = None

    @property
    def pool(self) -> LeaseHost[T]:
        """The pool this lease was taken from."""
        return self._pool

    @property
    def state(self) -> LeaseState:
        """New, held or done."""
        return self._state

    async def __aenter__(self) -> T:
        if self._state is not _NEW:
            raise RuntimeError("a Lease can be entered only once; call get_connection() again")
        pool = self._pool
        if pool._state is not _READY or pool._loop is not asyncio.get_running_loop():
            try:
                pool.check_usable()
            except BaseException as exc:
                _refused(pool, perf_counter(), exc)
                raise
        stats = pool.stats
        # The caller's resync.deadline(): one contextvar read when none is set
        # (the rules: resync.core.pools.kernel.deadlines).
        deadline = DEADLINE.get()
        if deadline is not None and out_of_time(deadline):
            stats.pool_misses += 1
            stats.deadline_exceeded += 1
            await asyncio.sleep(0)  # fail fast, but let the loop run (see below)
            raise _refused(pool, perf_counter(), pool._deadline_error(deadline, "before the lease"))
        breaker = pool.circuit_breaker
        if breaker is not None and not breaker.allow():
            stats.pool_misses += 1
            # Fail fast, but yield once: a caller retrying in a loop during an
            # outage must not starve the event loop (every other task, health
            # checks, the server's own requests).
            await asyncio.sleep(0)
            raise _refused(pool, perf_counter(), pool._unavailable_error())
        gate = pool._gate
        start = perf_counter()
        timeout = pool.config.connection_timeout
        if deadline is not None:
            timeout = min(timeout, deadline.remaining())
        if not gate.try_acquire():
            # The waiting path: max_waiting (by priority) and queue management.
            priority = self._priority
            reason = gate.refusal(priority)
            if reason is not None:
                stats.pool_misses += 1
                stats.pool_overloads += 1
                await asyncio.sleep(0)  # shed at once, but let the loop run (see above)
                raise _refused(pool, start, pool._overloaded_error(reason))
            stats.pool_waits += 1
            stats.waiting_connections += 1
            try:
                outcome = await gate.wait(timeout, priority)
            except BaseException as exc:
                stats.pool_misses += 1
                _refused(pool, start, exc)
                raise
            finally:
                stats.waiting_connections -= 1
            if outcome is not GRANTED:
                stats.pool_misses += 1
                if outcome is CLOSED:
                    raise _refused(pool, start, pool._closed_error())
                if outcome is DROPPED:
                    stats.pool_overloads += 1
                    raise _refused(pool, start, pool._dropped_error(perf_counter() - start))
                if deadline is not None and out_of_time(deadline):
                    stats.deadline_exceeded += 1
                    stage = "while waiting for a connection"
                    raise _refused(pool, start, pool._deadline_error(deadline, stage))
                stats.pool_exhaustions += 1
                raise _refused(pool, start, pool._timeout_error(perf_counter() - start))
            if breaker is not None and breaker.state is _OPEN:
                # It opened while we queued: fail fast, as a caller arriving now would.
                gate.release()
                stats.pool_misses += 1
                raise _refused(pool, start, pool._unavailable_error())
        # A slot is held from here on; every exit path below must release it.
        try:
            remaining = max(timeout - (perf_counter() - start), 0.001)
            kind = self._kind
            conn = await (
                pool._acquire_connection(remaining) if kind is None else kind.acquire(remaining)
            )
        except BaseException as exc:
            gate.release()
            stats.pool_misses += 1
            if deadline is not None and isinstance(exc, TimeoutError) and out_of_time(deadline):
                # Connecting or validating ran out of the caller's time: no
                # pool_exhaustions and no breaker outcome (the backend did nothing wrong).
                stats.deadline_exceeded += 1
                cut = pool._deadline_error(deadline, "while connecting")
                raise_mapped(_refused(pool, start, cut), exc)
            mapped = pool._on_acquire_error(exc, perf_counter() - start)
            _refused(pool, start, mapped)
            if mapped is exc:
                raise
            raise_mapped(mapped, exc)
        self._conn = conn
        if deadline is not None:
            abort = pool._bind_deadline(conn, deadline)
            self._deadline = LeaseDeadline(deadline, abort, asyncio.get_running_loop())
        self._state = _HELD
        self._started = start
        now = self._granted_at = perf_counter()
        waited = now - start
        stats.pool_hits += 1
        active = stats.active_connections = stats.active_connections + 1
        if active > stats.peak_active:
            stats.peak_active = active
        stats.average_wait_time = pool._wait_window.add(waited)
        pool.wait_histogram.observe(waited)
        if pool._leak_threshold:
            self._leak = LeakWatch(pool.name, pool._leak_threshold, pool.stats)
        if pool._has_acquire_hook and self._kind is None:
            try:
                await pool.on_connection_acquired(conn)
            except BaseException:
                await self.__aexit__(*sys.exc_info())
                raise
        return conn

    def _ended(self, error: BaseException | None, held: float) -> None:
        pool = self._pool
        started = self._started
        observe.notify(pool.name, pool.backend, started, self._granted_at - started, held, error)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state is not _HELD:
            return
        self._state = _DONE
        pool = self._pool
        conn = self._conn
        del self._conn
        held = perf_counter() - self._granted_at
        failed_release: BaseException | None = None
        kind = self._kind
        bound = self._deadline
        shown: BaseException | None = None  # the deadline's error, raised to the caller
        caller_exc = exc
        if bound is not None:
            self._deadline = None
            exc, shown = _settle(pool, kind, bound, exc)
        try:
            try:
                if kind is not None:
                    await kind.release(conn, exc)
                else:
                    if pool._has_release_hook:
                        try:
                            await pool.on_connection_released(conn)
                        except Exception:
                            logger.exception("pool '%s': on_connection_released failed", pool.name)
                    await pool._release_connection(conn, exc)
            except BaseException as error:
                failed_release = error  # e.g. a COMMIT on a connection that broke
                raise
            finally:
                if bound is not None:
                    bound.stop()  # after the release: its COMMIT/ROLLBACK was bounded too
                pool.stats.active_connections -= 1
                pool.use_histogram.observe(held)
                if pool.circuit_breaker is not None and (bound is None or not bound.fired):
                    # (A connection cut off at the caller's deadline says nothing of the backend.)
                    pool._record_outcome(exc, failed_release)
                pool._gate.release()
                if self._leak is not None:
                    self._leak.finish(held)
        except BaseException as release_error:
            # The release failed (or was cancelled): that ends the lease too.
            if observe.observers:
                self._ended(exc if exc is not None else release_error, held)
            raise
        if observe.observers:
            self._ended(exc, held)
        if shown is not None:
            if caller_exc is None:
                raise shown  # a clean exit after the cut: nothing was committed
            raise_mapped(shown, caller_exc)
        if exc is not None:
            mapped = pool._map_error(exc) if kind is None else kind.map_error(exc)
            if mapped is not exc:
                raise_mapped(mapped, exc)


def raise_mapped(mapped: BaseException, original: BaseException) -> NoReturn:
    """Raise the pool's error for ``original``: chained to it, or not at all.

    When the error ``hides_cause`` (the driver's error may quote a bound
    value, a token in a URL ...), the original is neither its ``__cause__``
    nor its ``__context__``: an error reporter that walks the chain finds
    nothing of it.
    """
    if not getattr(mapped, "hides_cause", False):
        raise mapped from original
    try:
        raise mapped from None
    except BaseException as raised:
        raised.__context__ = None  # a bare ``raise`` below keeps it cleared
        raise


def _settle(
    pool: LeaseHost[Any],
    kind: LeaseKind[Any] | None,
    bound: LeaseDeadline,
    exc: BaseException | None,
) -> tuple[BaseException | None, BaseException | None]:
    """How a lease with a deadline ends: (the error its release, breaker and
    observers are told, the deadline error raised to the caller or ``None``).

    See :mod:`resync.core.pools.kernel.deadlines` for the rules.
    """
    map_error = pool._map_error if kind is None else kind.map_error
    settled = bound.settle(exc, pool._is_backend_failure, map_error)
    if settled is _UNRELATED:
        return exc, None
    pool.stats.deadline_exceeded += 1
    if isinstance(exc, DeadlineExceededError):
        return exc, None  # already the deadline's error: raised as it is
    cut = pool._deadline_error(bound.deadline, "during the lease")
    if settled is not _ENDED:
        return cut, None  # cut off, but the body's own error propagates
    if exc is not None:
        cut.hides_cause = bool(getattr(map_error(exc), "hides_cause", False))
    return cut, cut


def _refused(pool: LeaseHost[T], started: float, error: BaseException) -> BaseException:
    """Tell the observers about a lease that got no connection; returns ``error``."""
    if observe.observers:
        observe.notify(pool.name, pool.backend, started, perf_counter() - started, 0.0, error)
    return error
