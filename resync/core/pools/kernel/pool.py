"""The base pool: one lifecycle, one admission path and one set of stats for all.

``ConnectionPool[ConnectionType]`` owns everything that is the same for every
backend; a backend (database, Redis, HTTP, a custom resource) only says how to
set up its driver, check a connection out and back in, run a health round trip
and close -- the protected hooks at the end of the class.

Lifecycle::

    new ──initialize()──▶ ready ──close()──▶ closing ──(drained)──▶ closed

- ``initialize()`` is idempotent; 50 concurrent callers run one setup. If setup
  fails the pool stays ``new`` (it may be retried) and the partial driver state
  is closed.
- ``close()`` is idempotent and concurrent callers share one close: it stops
  admitting (queued waiters fail at once with the "shutdown" error), waits up
  to ``drain_timeout`` for active leases, then closes the driver. Cancelling a
  caller of ``close()`` does not interrupt the close itself.
- a lease before ``initialize()`` raises the family's "not initialized" error;
  during or after ``close()`` its "is shutdown" error.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Self, TypeVar

from resync.core.deadlines import Deadline
from resync.core.exceptions import (
    GENERIC_ERRORS,
    ErrorFamily,
    PoolConfigError,
    ResyncError,
)
from resync.core.metrics import Histogram
from resync.core.pools.kernel.adaptive import AdaptiveLimit, LeaseTimeFeed
from resync.core.pools.kernel.admission import (
    DEFAULT,
    AdmissionGate,
    Priority,
    PriorityName,
    parse_priority,
)
from resync.core.pools.kernel.config import ConnectionPoolConfig
from resync.core.pools.kernel.errors import PoolErrorMessages
from resync.core.pools.kernel.health import HealthResult, PoolHealthChecks
from resync.core.pools.kernel.lease import Lease, raise_mapped
from resync.core.pools.kernel.state import PoolState
from resync.core.pools.kernel.stats import MAX_WAIT_TIMES, ConnectionPoolStats, WaitTimeWindow
from resync.core.redact import scrub
from resync.core.resilience import CircuitBreaker

__all__ = [
    "CLOSE_GRACE",
    "ConnectionPool",
    "ConnectionPoolConfig",
    "ConnectionPoolStats",
    "ConnectionType",
    "HealthResult",
    "PoolState",
]

logger = logging.getLogger("resync.pool")

ConnectionType = TypeVar("ConnectionType")


#: Seconds the driver's close may take after the drain (then sockets are aborted).
CLOSE_GRACE = 0.9


class ConnectionPool(PoolErrorMessages, PoolHealthChecks, ABC, Generic[ConnectionType]):
    """Base of every resync pool; see the module docstring for the lifecycle.

    Subclasses implement ``_setup_pool`` and ``_close_pool`` (abstract) and, to
    use the shared lease path, ``_acquire_connection`` and
    ``_release_connection``; ``_ping`` gives ``health_check`` its round trip.
    """

    #: Size of the bounded wait-time window (the seed's ``MAX_WAIT_TIMES``).
    MAX_WAIT_TIMES: ClassVar[int] = MAX_WAIT_TIMES
    #: Backend label used in stats and metrics.
    backend: ClassVar[str] = "generic"
    #: Exception classes this backend raises from the shared lease path.
    errors: ClassVar[ErrorFamily] = GENERIC_ERRORS
    #: True: the lease path reports one circuit-breaker outcome per lease.
    #: A backend that reports outcomes itself (the HTTP pool, per request:
    #: a lease may make several, and a 500 answer is a failure without any
    #: exception) sets it False; leases still ask the breaker before queuing.
    breaker_outcome_per_lease: ClassVar[bool] = True

    def __init__(self, config: ConnectionPoolConfig) -> None:
        if not isinstance(config, ConnectionPoolConfig):
            raise PoolConfigError(
                f"{type(self).__name__} needs a ConnectionPoolConfig, got {type(config).__name__}"
            )
        self.config = config
        self.stats = ConnectionPoolStats()
        self._wait_window = WaitTimeWindow(self.MAX_WAIT_TIMES)
        # The seed's name: the last MAX_WAIT_TIMES wait times, oldest first (read-only view).
        self._wait_times = self._wait_window.values
        self.wait_histogram = Histogram()
        self.use_histogram = Histogram()
        self.circuit_breaker: CircuitBreaker | None = None
        self._gate = AdmissionGate(
            config.max_size,
            config.max_waiting,
            queue_target=config.queue_target or 0.0,
            queue_interval=config.queue_interval or 0.0,
        )
        #: With ``config.adaptive_limit``: the Gradient2 limit, made by ``initialize()``.
        self.adaptive_limit: AdaptiveLimit | None = None
        self._state = PoolState.NEW
        # The seed's flags: _initialized = initialize() has succeeded once;
        # _shutdown = close() has begun (the lifecycle itself is ``_state``).
        self._initialized = False
        self._shutdown = False
        self._init_lock: asyncio.Lock | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._drained: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._leak_threshold = config.leak_detection_threshold
        self.leases_abandoned = 0
        cls, base = type(self), ConnectionPool
        self._has_acquire_hook = cls.on_connection_acquired is not base.on_connection_acquired
        self._has_release_hook = cls.on_connection_released is not base.on_connection_released

    # --- identity -------------------------------------------------------------

    @property
    def name(self) -> str:
        """The pool's name (``config.pool_name``)."""
        return self.config.pool_name

    @property
    def state(self) -> PoolState:
        """Lifecycle state: new, ready, closing or closed."""
        return self._state

    @property
    def display_target(self) -> str | None:
        """Where the pool connects, secrets masked (None for a pool with no server)."""
        return None

    def _current_state(self) -> PoolState:
        return self._state

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the pool was opened on (``None`` before ``initialize()``)."""
        return self._loop

    @property
    def gate(self) -> AdmissionGate:
        """The admission gate: ``max_size`` slots and a strictly FIFO wait queue."""
        return self._gate

    @property
    def is_ready(self) -> bool:
        """True between a successful ``initialize()`` and ``close()``."""
        return self._state is PoolState.READY

    def __repr__(self) -> str:
        gate = self._gate
        return (
            f"<{type(self).__name__} '{self.name}' [{self._state.value} | leases: "
            f"{self.stats.active_connections} active, {gate.waiting} waiting, "
            f"max {gate.capacity} | connections: {self._idle_connections()} idle]>"
        )

    # --- lifecycle --------------------------------------------------------------

    async def initialize(self) -> None:
        """Set the driver up and open ``min_size`` connections; idempotent.

        Concurrent callers share one setup. On failure the pool stays ``new``
        and the family's setup error is raised (password hidden). A caller
        cancelled while waiting does not cancel the setup of the others.
        Raises the "is shutdown" error if the pool was closed.
        """
        if self._state is PoolState.READY:
            return
        if self._state is not PoolState.NEW:
            raise self._closed_error()
        if self._init_lock is None:
            self._init_lock = asyncio.Lock()
        async with self._init_lock:
            # Re-read: another caller may have finished (or closed) while we waited.
            state = self._current_state()
            if state is PoolState.READY:
                return
            if state is not PoolState.NEW:
                raise self._closed_error()
            loop = asyncio.get_running_loop()
            try:
                await self._setup_pool()
            except BaseException as exc:
                await self._discard_partial_setup()
                if isinstance(exc, ResyncError) or not isinstance(exc, Exception):
                    raise
                error = self.errors.setup(self._setup_failure(exc), pool_name=self.name)
                # The driver's error may hold the URL (a password, a token in
                # its query) in its attributes: with secrets about, it is left
                # out of the chain; the message above says what it said.
                error.hides_cause = bool(self._secrets())
                raise_mapped(error, exc)
            if self._current_state() is not PoolState.NEW:  # closed while setting up
                await self._discard_partial_setup()
                raise self._closed_error()
            self._loop = loop
            if self.config.adaptive_limit and self.adaptive_limit is None:
                self._start_adaptive_limit()
            self._state = PoolState.READY
            self._initialized = True
            logger.info(
                "pool '%s' ready (%s, max_size=%d)", self.name, self.backend, self.config.max_size
            )

    async def close(self, drain_timeout: float | None = None) -> None:
        """Stop admitting, drain active leases, close the driver; idempotent.

        Waiters still queued fail at once with the "is shutdown" error. Active
        leases get up to ``drain_timeout`` seconds (default
        ``config.drain_timeout``) to finish; any still open then are counted in
        ``leases_abandoned`` and logged, and the driver is closed under them.
        Concurrent callers wait for the same close; cancelling a caller does
        not stop the close.
        """
        if self._state is PoolState.NEW and self._close_task is None:
            self._state = PoolState.CLOSED
            self._shutdown = True
            self._gate.close()
            return
        if self._close_task is None:
            self._state = PoolState.CLOSING
            self._shutdown = True
            woken = self._gate.close()
            if woken:
                logger.info("pool '%s' closing: %d queued callers refused", self.name, woken)
            timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
            self._close_task = asyncio.ensure_future(self._drain_and_close(timeout))
        await asyncio.shield(self._close_task)

    async def _drain_and_close(self, timeout: float) -> None:
        gate = self._gate
        if gate.in_use:
            drained = self._drained = asyncio.Event()
            gate.on_empty = drained.set
            try:
                await asyncio.wait_for(drained.wait(), timeout)
            except TimeoutError:
                self.leases_abandoned = gate.in_use
                logger.warning(
                    "pool '%s': %d leases still active after the %.3gs drain; closing under them",
                    self.name,
                    gate.in_use,
                    timeout,
                )
        try:
            # Goodbyes to the server get CLOSE_GRACE seconds: on a dead network
            # they would each wait a connect timeout. Past it, the backend's
            # close is cancelled, which aborts every socket it still holds.
            async with asyncio.timeout(CLOSE_GRACE):
                await self._close_pool()
        except TimeoutError:
            logger.warning(
                "pool '%s': the server did not answer the close within %.3gs; "
                "its connections were aborted",
                self.name,
                CLOSE_GRACE,
            )
        except Exception as exc:
            logger.error(
                "pool '%s': error while closing the driver: %s", self.name, self.scrub(exc)
            )
        finally:
            self._state = PoolState.CLOSED
            logger.info("pool '%s' closed", self.name)

    async def _discard_partial_setup(self) -> None:
        try:
            await asyncio.shield(self._close_pool())
        except BaseException as exc:  # cleanup must not hide the setup error
            logger.debug("pool '%s': cleanup after failed setup: %s", self.name, self.scrub(exc))

    async def __aenter__(self) -> Self:
        await self.initialize()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- leasing ---------------------------------------------------------------

    def get_connection(self, priority: Priority | PriorityName = DEFAULT) -> Lease[ConnectionType]:
        """Lease one connection: ``async with pool.get_connection() as conn``.

        Waits at most ``config.connection_timeout`` (queue plus connect) and
        raises the family's timeout error otherwise -- a ``TimeoutError`` whose
        message starts "Timeout acquiring connection from pool '<name>'".
        Waiters are served strictly first come, first served. With
        ``max_waiting`` set and reached, or queue management shedding load
        (``queue_target``), fails with the family's overloaded error
        (``PoolOverloadedError``: 503 + ``Retry-After`` through the service).
        ``priority`` -- ``"critical"``, ``"default"`` or ``"sheddable"``
        (:class:`~resync.core.pools.kernel.admission.Priority`) -- decides who
        is refused first under overload, never the order of service; any other
        value raises :class:`~resync.core.exceptions.InvalidPriorityError`.
        Cancellation at any point frees the slot; leaving the block returns the
        connection even if the block raised.
        """
        if priority is DEFAULT:
            return Lease(self)
        return Lease(self, None, self.priority_of(priority))

    def priority_of(self, priority: object) -> Priority:
        """``priority`` as a :class:`Priority`; :class:`InvalidPriorityError` naming
        this pool if it is not ``critical``, ``default`` or ``sheddable``."""
        return parse_priority(priority, self.name)

    def check_usable(self) -> None:
        """Raise the family's error unless the pool is ready and on the current loop.

        Not initialized: the "not initialized" error; closing or closed: the
        closed error; opened on another event loop: the family's base error.
        """
        state = self._state
        if state is not PoolState.READY:
            if state is PoolState.NEW:
                raise self._not_initialized_error()
            raise self._closed_error()
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            raise self.errors.base(
                f"Pool '{self.name}' was opened on a different event loop; open and use a "
                "pool on the same loop (create a new pool in the new loop)",
                pool_name=self.name,
            )

    # --- live operations ------------------------------------------------------------

    async def drain(self, interval: float | None = None) -> int:
        """Replace every open connection without refusing a lease.

        Idle connections are closed and reopened one at a time, spread over
        ``interval`` seconds (default: a second per connection, at most 30 s);
        leased ones are replaced when they come back. Returns how many
        connections were marked for replacement. Raises the "not initialized"
        or "shutdown" error outside ``ready``. Cancelling the caller stops
        the spreading; connections already marked are still replaced on return.
        """
        self.check_usable()
        replaced = await self._replace_connections(interval)
        logger.info("pool '%s': draining %d connection(s)", self.name, replaced)
        return replaced

    async def resize(self, min_size: int, max_size: int) -> None:
        """Change ``min_size`` and ``max_size`` at runtime.

        Growing admits queued waiters at once; shrinking lets active leases
        finish (the extra slots are simply not handed out again) and closes
        surplus idle connections. Raises ``PoolConfigError`` for invalid sizes.
        """
        self.config = self.config.replace(min_size=min_size, max_size=max_size)
        if self.adaptive_limit is not None:
            self.adaptive_limit.set_bounds(max(min_size, 1), self._admission_capacity(max_size))
        else:
            self._gate.resize(self._admission_capacity(max_size))
        await self._apply_resize()
        logger.info("pool '%s' resized to min=%d max=%d", self.name, min_size, max_size)

    # --- stats -------------------------------------------------------------------

    async def increment_stat(self, stat_name: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``stat_name`` (seed API; no lock needed)."""
        if not hasattr(self.stats, stat_name):
            raise AttributeError(f"pool '{self.name}' has no stat {stat_name!r}")
        setattr(self.stats, stat_name, getattr(self.stats, stat_name) + amount)

    async def update_wait_time(self, wait_time: float) -> None:
        """Record one wait time (seconds) in the bounded window (seed API)."""
        self.stats.average_wait_time = self._wait_window.add(wait_time)

    def get_stats_snapshot(self) -> dict[str, Any]:
        """Every stat plus config sizes, pool name, backend and state, as a dict.

        The keys are the same for every backend, so dashboards need one schema.
        Never contains a secret.
        """
        stats = self.stats
        stats.idle_connections = self._idle_connections()
        stats.waiting_connections = self._gate.waiting
        data = stats.as_dict()
        breaker = self.circuit_breaker
        data.update(
            pool_name=self.name,
            backend=self.backend,
            state=self._state.value,
            min_size=self.config.min_size,
            max_size=self.config.max_size,
            # Leases admitted at once; differs from max_size when the backend
            # grants fewer (SQLite memory: 1) or more (ResourcePool overflow).
            capacity=self._gate.capacity,
            max_waiting=self.config.max_waiting,
            connection_timeout=self.config.connection_timeout,
            wait_time_p99=self.wait_histogram.quantile(0.99),
            leases_abandoned=self.leases_abandoned,
            circuit_breaker=breaker.snapshot() if breaker is not None else None,
            admission=self._admission_snapshot(),
            details=self._details(),
        )
        return data

    def _admission_snapshot(self) -> dict[str, Any]:
        """Queue management, refusals by priority and the adaptive limit (or None)."""
        data = self._gate.snapshot()
        limit = self.adaptive_limit
        data["adaptive"] = limit.snapshot() if limit is not None else None
        return data

    def _start_adaptive_limit(self) -> None:
        """Put the Gradient2 limit in charge of the gate's capacity (``initialize()``).

        Made after setup so that the capacity the backend grants (SQLite in
        memory: 1; a ResourcePool's overflow) is the ceiling. The lease times
        reach it through the use-time histogram (:class:`LeaseTimeFeed`).
        """
        gate = self._gate
        ceiling = gate.capacity
        limit = AdaptiveLimit(gate, max(1, min(self.config.min_size, ceiling)), ceiling)
        self.adaptive_limit = limit
        feed = LeaseTimeFeed(limit)
        self.use_histogram = feed

    # --- hooks --------------------------------------------------------------------

    async def on_connection_acquired(self, connection: ConnectionType) -> None:
        """Called after a lease is granted (no-op by default); errors end the lease."""

    async def on_connection_released(self, connection: ConnectionType) -> None:
        """Called before a connection is returned (no-op by default); errors are logged."""

    # --- backend hooks --------------------------------------------------------------

    @abstractmethod
    async def _setup_pool(self) -> None:
        """Create the driver pool and open ``min_size`` connections."""

    @abstractmethod
    async def _close_pool(self) -> None:
        """Close the driver and every connection it holds; must be safe to repeat."""

    async def _acquire_connection(self, timeout: float) -> ConnectionType:
        """Check out one driver connection within ``timeout`` seconds.

        Called with an admission slot held. Must not leak the connection if
        cancelled; may raise ``TimeoutError`` (mapped to the family timeout).
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement _acquire_connection or override get_connection"
        )

    async def _release_connection(
        self, connection: ConnectionType, error: BaseException | None
    ) -> None:
        """Check ``connection`` back in; ``error`` is what ended the lease body.

        Must leave no connection behind even if cancelled (discard it when its
        state is unknown). May raise a mapped error (e.g. a failed commit).
        """

    async def _ping(self, connection: ConnectionType) -> None:
        """One round trip on ``connection`` (SELECT 1, PING, a request)."""

    def _idle_connections(self) -> int:
        """Open driver connections not leased now (0 when unknown)."""
        return 0

    async def _replace_connections(self, interval: float | None) -> int:
        """Mark every connection for replacement (``drain``); 0 when not supported."""
        return 0

    async def _apply_resize(self) -> None:
        """React to new ``config`` sizes (open up to min_size, close surplus idle)."""

    def _admission_capacity(self, max_size: int) -> int:
        """Leases to admit at once for ``max_size`` (a backend may grant fewer)."""
        return max_size

    def _details(self) -> dict[str, Any]:
        """Backend facts for the stats' ``details`` key (target, driver ...); never secrets."""
        return {}

    def _map_error(self, error: BaseException) -> BaseException:
        """Translate a backend error to the family; return ``error`` to leave it."""
        return error

    def _bind_deadline(self, connection: Any, deadline: Deadline) -> Callable[[], object] | None:
        """A lease got ``connection`` (of any of its kinds) inside ``deadline``.

        Bound the calls made on it by the time left, and/or return an
        *abort*: a callable with no ``await`` the lease runs at the deadline
        to cut the connection off (what is in flight on it then fails, and
        the lease ends with the deadline error, discarding the connection).
        ``None`` (the default): nothing to bound, or the backend bounds its
        calls itself. See :mod:`resync.core.pools.kernel.deadlines`.
        """
        return None

    def _is_backend_failure(self, error: BaseException) -> bool:
        """Does ``error`` say the backend is failing (feeds the circuit breaker)?

        By default: OS-level errors (refused, reset, timed out) that are not
        resync's own; backends refine this with their driver's error types.
        """
        return isinstance(error, OSError) and not isinstance(error, ResyncError)

    def _is_connect_failure(self, error: BaseException) -> bool:
        """Does ``error``, raised while checking a connection out (connect,
        validation), say the backend is failing (feeds the circuit breaker)?

        By default the rule of :meth:`_is_backend_failure`; a backend whose
        driver reports a refused connect differently (the server turning the
        login away) widens it. The pool's own errors never count.
        """
        return self._is_backend_failure(error)

    def _is_release_failure(self, error: BaseException) -> bool:
        """Does ``error``, raised by ``_release_connection`` (already mapped to
        the family), say the backend failed (a commit on a broken connection)?
        False by default: other release errors are classified as a body's."""
        return False

    def _secrets(self) -> list[str]:
        """Strings that must never be shown (passwords of the backend URL)."""
        return []

    def _setup_failure(self, exc: BaseException) -> str:
        """ "Failed to setup pool 'x' (target): what happened; what to change"."""
        target = self.display_target
        detail = self.scrub(exc).strip()
        where = f" ({target})" if target and target not in detail else ""
        timeout = self.config.connection_timeout
        if not detail or isinstance(exc, TimeoutError):
            # An exception with an empty str() (asyncio's TimeoutError, a
            # CancelledError turned timeout): say what it means.
            what = detail or f"no answer within {timeout:g}s"
            return (
                f"Failed to setup pool '{self.name}'{where}: {type(exc).__name__}: {what}. "
                "The server did not answer in time (down, unreachable, overloaded, or "
                "not this kind of server): check the host and port, or raise the "
                "connect timeout"
            )
        return f"Failed to setup pool '{self.name}'{where}: {detail}"

    def scrub(self, error: object) -> str:
        """``str(error)`` with every secret of this pool (URL passwords, tokens) masked."""
        return scrub(str(error), self._secrets())

    async def ping(self, connection: ConnectionType) -> None:
        """One round trip on a leased ``connection`` (what ``health_check`` measures)."""
        await self._ping(connection)
