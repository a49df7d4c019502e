"""A pool of resources it opens and closes itself: worker processes, sockets, clients.

``ResourcePool[T]`` is a :class:`~resync.core.pools.kernel.pool.ConnectionPool`
for anything without a driver pool. Callbacks may be sync (run on the loop:
keep them quick) or async: ``create() -> T``, ``close(T)``, optional
``validate(T) -> bool`` (before each checkout, on idle resources every
``validate_interval`` s -- default ``health_check_interval``, 0 = never -- and
as the health round trip) and ``reset(T)`` on return.

Sizes: ``initialize()`` opens ``min_size`` resources, each retried with
exponential backoff and full jitter (``create_retry``); if one still fails, the
setup error names the pool. At rest at most ``max_size`` stay open. ``overflow``
more leases are admitted (gate capacity ``max_size + overflow``, shown as the
stats' ``capacity``); a resource returned while more than ``max_size`` are open
is closed -- unless a caller is already queued, who gets it instead.

Checkout takes an idle resource ("fifo": idle longest; "lifo": returned last),
closing any that expired (``max_lifetime``, jittered -5%), were drained or fail
``validate``. Else it waits for the next resource made or returned (handed over
without another validation), starting a creation unless enough are on their
way; a creation's error goes to the oldest waiting caller. The whole checkout
is bounded by ``connection_timeout``; a creation outliving its caller still
finishes (each attempt bounded by ``create_timeout``) and serves the next.

Return: the resource is closed, never handed out again, when the holder raised a
*broken* error (``is_broken``, default :class:`~resync.core.exceptions.ResourceBroken`),
when :meth:`ResourcePool.mark_broken` or a failed health ping flagged it, when
``reset`` raises, or when it expired, was drained or is overflow. Other errors
of the holder are its own: the resource is reset and reused.

Cancellation: a holder cancelled while holding leaves its resource in an
unknown state (a request half written, an answer unread), so it is closed and
replaced -- unless ``reuse_after_cancel=True``, which treats it as a normal
return (``reset`` must restore it). Cancelled during validate or reset: closed.
The slot is always freed; a close, once started, runs to its end in its own task.

A maintenance task (:mod:`~resync.core.pools.resource.maintenance`) started by
``initialize()`` expires, reaps (``idle_timeout``, down to ``min_size``),
validates and refills. ``close()`` waits for leases up to ``drain_timeout``,
cancels it and creations in flight, and closes every resource -- idle or held
by an abandoned lease -- each bounded by ``close_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any, ClassVar, TypeVar

from resync.core.pools.kernel.pool import ConnectionPool, ConnectionPoolConfig
from resync.core.pools.resource.maintenance import (
    check_entry,
    close_entry,
    close_everything,
    open_entry,
    open_initial,
    replace_all,
    run_maintenance,
    trim_surplus,
)
from resync.core.pools.resource.support import (
    Entry,
    IdleOrder,
    check_options,
    default_is_broken,
    resolve,
)
from resync.core.resilience import BreakerSpec, RetryPolicy, build_circuit_breaker

__all__ = ["ResourcePool"]

logger = logging.getLogger("resync.pool")

T = TypeVar("T")

#: Setup and replacement creations: 4 tries, waits drawn from 0-0.1 s doubling to 2 s.
DEFAULT_CREATE_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=2.0)


class ResourcePool(ConnectionPool[T]):
    """A pool of resources made by ``create`` and ended by ``close``; see the module docstring."""

    backend: ClassVar[str] = "resource"

    def __init__(
        self,
        config: ConnectionPoolConfig,
        create: Callable[[], Awaitable[T]] | Callable[[], T],
        close: Callable[[T], object],
        *,
        validate: Callable[[T], Awaitable[bool]] | Callable[[T], bool] | None = None,
        reset: Callable[[T], object] | None = None,
        overflow: int = 0,
        order: IdleOrder = "fifo",
        is_broken: Callable[[BaseException], bool] = default_is_broken,
        reuse_after_cancel: bool = False,
        validate_interval: float | None = None,
        create_retry: RetryPolicy = DEFAULT_CREATE_RETRY,
        create_timeout: float = 30.0,
        close_timeout: float = 10.0,
        maintenance_interval: float | None = None,
        circuit_breaker: BreakerSpec = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(config)
        check_options(
            config.pool_name,
            overflow=overflow,
            order=order,
            close_timeout=close_timeout,
            create_timeout=create_timeout,
            validate_interval=validate_interval,
            maintenance_interval=maintenance_interval,
            callbacks={"create": create, "close": close, "validate": validate, "reset": reset},
        )
        if backend is not None:
            # ``backend`` labels stats and metrics; an instance value shadows the class one.
            self.__dict__["backend"] = backend
        self._create = create
        self._close = close
        self._validate = validate
        self._reset = reset
        self._is_broken = is_broken
        self._reuse_after_cancel = reuse_after_cancel
        self._validate_interval = (
            config.health_check_interval if validate_interval is None else validate_interval
        )
        self._retry = create_retry
        self._create_timeout = create_timeout
        self._close_timeout = close_timeout
        self._maintenance_interval = maintenance_interval
        self.overflow = overflow
        self.order: IdleOrder = order
        self.circuit_breaker = build_circuit_breaker(config.pool_name, circuit_breaker)
        self._gate.resize(config.max_size + overflow)
        self._idle: deque[Entry[T]] = deque()
        self._in_use: dict[int, Entry[T]] = {}
        self._entries: set[Entry[T]] = set()
        self._opening = 0
        self._generation = 0
        self._stopping = False
        self._creating: set[asyncio.Task[Exception | None]] = set()
        self._waiters: deque[asyncio.Future[Entry[T]]] = deque()
        self._closing: set[asyncio.Task[None]] = set()
        self._maintenance: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        #: Resources closed, by reason ("broken", "validation", "idle", ...).
        self.closed_by_reason: Counter[str] = Counter()
        self.create_failures = 0

    # --- public extras ------------------------------------------------------------

    def mark_broken(self, resource: T) -> bool:
        """Close ``resource`` when its lease ends instead of returning it.

        For a holder that finds its resource unusable without raising. Returns
        False if ``resource`` is not leased from this pool now.
        """
        entry = self._in_use.get(id(resource))
        if entry is None or entry.value is not resource:
            return False
        entry.broken = True
        return True

    def resources(self) -> list[T]:
        """Every open resource now, idle or leased (a snapshot; for inspection)."""
        return [entry.value for entry in self._entries]

    @property
    def size(self) -> int:
        """Resources open now, idle or leased, plus creations in flight."""
        return len(self._entries) + self._opening

    @property
    def _live_waiters(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    # --- lifecycle hooks ------------------------------------------------------------

    async def _setup_pool(self) -> None:
        self._stopping = False
        self._wakeup = asyncio.Event()
        await open_initial(self)
        self._maintenance = asyncio.create_task(
            self._maintain(), name=f"resync-{self.name}-maintenance"
        )

    async def _close_pool(self) -> None:
        await close_everything(self)

    # --- checkout and return --------------------------------------------------------

    async def _acquire_connection(self, timeout: float) -> T:
        deadline = monotonic() + timeout
        while (entry := self._pop_idle()) is not None:
            reason = self._stale(entry, monotonic())
            if reason is None and self._validate is not None:
                budget = deadline - monotonic()
                if budget <= 0:
                    self._unpop(entry)
                    raise TimeoutError("no time left to validate an idle resource")
                reason = await self._check(entry, budget)
            if reason is None:
                return self._lend(entry)
            self._discard(entry, reason)
        # Nothing idle: wait for the next resource made (or returned), asking for
        # a creation unless enough are already on their way for the callers waiting.
        waiter: asyncio.Future[Entry[T]] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._opening < self._live_waiters:
            self._spawn_open(retry=False)
        try:
            async with asyncio.timeout(max(deadline - monotonic(), 0.0)):
                entry = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                if waiter.exception() is None:  # handed over just as this caller gave up
                    self._keep_idle(waiter.result())
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        return self._lend(entry)

    async def _release_connection(self, connection: T, error: BaseException | None) -> None:
        entry = self._in_use.pop(id(connection), None)
        if entry is None:  # closed under an abandoned lease by close()
            return
        entry.last_used = now = monotonic()
        reason = self._return_reason(entry, error) or self._stale(entry, now)
        if reason is None and self._reset is not None:
            try:
                async with asyncio.timeout(self.config.connection_timeout):
                    await resolve(self._reset(connection))
            except asyncio.CancelledError:
                self._discard(entry, "cancelled")
                raise
            except Exception as exc:
                logger.warning(
                    "pool '%s': reset failed, closing the resource: %s: %s",
                    self.name,
                    type(exc).__name__,
                    self._scrub(exc),
                )
                reason = "reset"
        if reason is None:  # re-read: the pool may have started closing during reset
            reason = self._stale(entry, monotonic()) or self._surplus_reason()
        if reason is None:
            self._deliver(entry)
            return
        await asyncio.shield(self._discard(entry, reason))

    def _return_reason(self, entry: Entry[T], error: BaseException | None) -> str | None:
        if entry.broken:
            return "broken"
        if error is not None:
            if isinstance(error, asyncio.CancelledError):
                if not self._reuse_after_cancel:
                    return "cancelled"
            elif not isinstance(error, Exception):
                return "cancelled"  # KeyboardInterrupt, SystemExit: state unknown
            elif self._is_broken(error):
                return "broken"
        return None

    def _pop_idle(self) -> Entry[T] | None:
        idle = self._idle
        if not idle:
            return None
        return idle.popleft() if self.order == "fifo" else idle.pop()

    def _unpop(self, entry: Entry[T]) -> None:
        if self.order == "fifo":
            self._idle.appendleft(entry)
        else:
            self._idle.append(entry)

    def _lend(self, entry: Entry[T]) -> T:
        entry.last_used = monotonic()
        self._in_use[id(entry.value)] = entry
        return entry.value

    def _stale(self, entry: Entry[T], now: float) -> str | None:
        """Why ``entry`` must not be used any more, or None."""
        if self._stopping or self._shutdown:
            return "closed"
        if entry.broken:
            return "broken"
        if entry.generation < self._generation:
            return "drained"
        if now >= entry.expires:
            return "lifetime"
        return None

    def _surplus_reason(self) -> str | None:
        # Overflow: more than max_size open. Kept only for a caller already queued.
        if self.size > self.config.max_size and not (self._gate.waiting or self._live_waiters):
            return "overflow"
        return None

    async def _check(self, entry: Entry[T], budget: float) -> str | None:
        return await check_entry(self, entry, budget)

    # --- opening and closing resources -------------------------------------------------

    def _spawn_open(self, *, retry: bool) -> asyncio.Task[Exception | None]:
        """Start one creation, counted in ``size`` at once; its resource is delivered."""
        self._opening += 1
        task = asyncio.create_task(self._open_and_deliver(retry), name=f"resync-{self.name}-create")
        self._creating.add(task)
        task.add_done_callback(self._creating.discard)
        return task

    async def _open_and_deliver(self, retry: bool) -> Exception | None:
        """Create one resource and deliver it; return the creation's error, if any.

        The error is also handed to the oldest caller waiting for a resource.
        """
        try:
            entry = await open_entry(self, retry=retry)
        except Exception as exc:
            self.create_failures += 1
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(exc)
                    break
            return exc
        finally:
            self._opening -= 1
        self._keep_idle(entry)
        return None

    def _keep_idle(self, entry: Entry[T]) -> None:
        reason = self._stale(entry, monotonic()) or self._surplus_reason()
        if reason is None:
            self._deliver(entry)
        else:
            self._discard(entry, reason)

    def _deliver(self, entry: Entry[T]) -> None:
        """To the oldest caller waiting for a resource (not validated again), else idle."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(entry)
                return
        self._idle.append(entry)

    def _discard(self, entry: Entry[T], reason: str, *, replace: bool = True) -> asyncio.Task[None]:
        """Forget ``entry`` now and close it in its own task (never interrupted).

        With ``replace`` the maintenance task is woken to refill up to min_size.
        """
        self._entries.discard(entry)
        self.closed_by_reason[reason] += 1
        logger.debug("pool '%s': closing a resource (%s)", self.name, reason)
        task = asyncio.create_task(close_entry(self, entry), name=f"resync-{self.name}-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        if replace and not self._stopping and self._wakeup is not None:
            self._wakeup.set()  # replace it up to min_size
        return task

    # --- maintenance and live operations (resource_maintenance) ---------------------------

    async def _maintain(self) -> None:
        await run_maintenance(self)

    async def _replace_connections(self, interval: float | None) -> int:
        return await replace_all(self, interval)

    async def _apply_resize(self) -> None:
        # The base set the gate to max_size; overflow leases stay admitted on top.
        self._gate.resize(self.config.max_size + self.overflow)
        trim_surplus(self, "resized")
        if self._wakeup is not None:
            self._wakeup.set()  # open up to a larger min_size

    # --- health, stats, errors ----------------------------------------------------------------

    async def _ping(self, connection: T) -> None:
        if self._validate is None:
            return
        if not await resolve(self._validate(connection)):
            self.mark_broken(connection)
            raise ConnectionError(f"a resource of pool '{self.name}' failed validation")

    def _idle_connections(self) -> int:
        return len(self._idle)

    def _details(self) -> dict[str, Any]:
        return {
            "open": len(self._entries),
            "in_use": len(self._in_use),
            "opening": self._opening,
            "overflow": self.overflow,
            "order": self.order,
            "generation": self._generation,
            "create_failures": self.create_failures,
            "closed": dict(self.closed_by_reason),
        }

    def _is_backend_failure(self, error: BaseException) -> bool:
        return self._is_broken(error) or super()._is_backend_failure(error)
