"""The open resources of one resource pool, and everything that makes, checks and ends them.

:class:`ResourceStock` owns the records (:class:`~.support.ConnectionRecord`)
of every open resource -- idle, leased, or being validated -- the creations
in flight, the callers waiting for the next resource and the maintenance
task. It knows nothing of the pool, which hands it its config, stats,
admission gate, a :class:`~.maker.ResourceMaker` and a ``scrub`` for messages.

Maintenance wakes every kernel :func:`~resync.core.pools.kernel.pacing.maintenance_tick`
(or ``maintenance_interval``) and whenever a resource was closed. A pass closes
idle resources that are stale (expired, drained, pool closing), idle longer
than ``idle_timeout`` above ``min_size``, or surplus above ``max_size``;
validates those unchecked for ``validate_interval``; and refills to
``min_size`` with backoff. A failed pass is logged; the next tick runs another.
:meth:`ResourceStock.close_all` stops the task (kernel
:func:`~resync.core.pools.kernel.loops.stop_task`) and cancels creations in
flight; closes already started finish in their own tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable
from time import monotonic
from typing import Generic, TypeVar

from resync.core.pools.kernel.admission import AdmissionGate
from resync.core.pools.kernel.config import ConnectionPoolConfig
from resync.core.pools.kernel.loops import start_task, stop_task
from resync.core.pools.kernel.pacing import drain_interval, expiry, maintenance_tick
from resync.core.pools.kernel.stats import ConnectionPoolStats
from resync.core.pools.resource.maker import ResourceMaker
from resync.core.pools.resource.support import ConnectionRecord, Handoff, IdleOrder

__all__ = ["ResourceStock"]

logger = logging.getLogger("resync.pool")

T = TypeVar("T")


class ResourceStock(Generic[T]):
    """The records of one pool's open resources, the waiters for the next one,
    and the maintenance that expires, reaps, validates and refills them.

    Every method keeps each resource accounted for whatever interrupts it: a
    resource is either in :attr:`records` (idle, leased or being checked) or
    being closed in a task of its own that runs to its end.
    """

    def __init__(
        self,
        name: str,
        config: ConnectionPoolConfig,
        stats: ConnectionPoolStats,
        gate: AdmissionGate,
        maker: ResourceMaker[T],
        *,
        order: IdleOrder,
        validate_interval: float,
        maintenance_interval: float | None,
        is_closing: Callable[[], bool],
        scrub: Callable[[object], str],
    ) -> None:
        self.name = name
        self.config = config
        self.stats = stats
        self.gate = gate
        self.maker = maker
        self.order: IdleOrder = order
        self.validate_interval = validate_interval
        self._maintenance_interval = maintenance_interval
        self._is_closing = is_closing
        self._scrub = scrub
        self.idle: deque[ConnectionRecord[T]] = deque()
        #: Leased records by ``id()`` of their resource.
        self.leased: dict[int, ConnectionRecord[T]] = {}
        #: Every open resource: idle, leased, or being validated.
        self.records: set[ConnectionRecord[T]] = set()
        #: Creations in flight, counted in :attr:`size` from their start.
        self.opening = 0
        #: Records of an older generation are replaced, never reused.
        self.generation = 0
        self.stopping = False
        #: Resources closed, by reason ("broken", "validation", "idle", ...).
        self.closed_by_reason: Counter[str] = Counter()
        self.create_failures = 0
        self.maintenance: asyncio.Task[None] | None = None
        self._creating: set[asyncio.Task[Exception | None]] = set()
        self._waiters: Handoff[ConnectionRecord[T]] = Handoff()
        self._closing: set[asyncio.Task[None]] = set()
        self._wakeup: asyncio.Event | None = None

    @property
    def size(self) -> int:
        """Resources open now, idle or leased, plus creations in flight."""
        return len(self.records) + self.opening

    @property
    def live_waiters(self) -> int:
        """Callers waiting now for the next resource made or returned."""
        return self._waiters.live

    # --- opening and closing the stock -----------------------------------------------

    async def open(self) -> list[Exception]:
        """Open ``min_size`` resources concurrently, each with backoff, then start
        maintenance; returns the creations' errors (none started it if any failed).

        Resources already made stay recorded for :meth:`close_all` to close.
        """
        self.stopping = False
        self._wakeup = asyncio.Event()
        wanted = self.config.min_size
        results = await asyncio.gather(*(self.spawn_open(retry=True) for _ in range(wanted)))
        failures = [error for error in results if error is not None]
        if not failures:
            self.maintenance = start_task(self._maintain(), name=f"resync-{self.name}-maintenance")
        return failures

    async def close_all(self, closed_error: Callable[[], BaseException]) -> None:
        """Stop maintenance and creations, fail the waiters, close every resource.

        Callers still waiting get ``closed_error()``; every resource -- idle,
        still held by an abandoned lease, or made by a creation that won the
        race with its cancellation -- is closed, each bounded by
        ``close_timeout``. Cancelled, the cancellation propagates; the closes
        already started finish in their own tasks.
        """
        self.stopping = True
        creating = [*self._creating]
        for task in creating:
            task.cancel()
        maintenance, self.maintenance = self.maintenance, None
        await stop_task(maintenance)
        if creating:
            await asyncio.gather(*creating, return_exceptions=True)
        # leases still checking out after the drain deadline
        self._waiters.fail(closed_error(), everyone=True)
        self.idle.clear()
        self.leased.clear()
        for record in list(self.records):
            self.discard(record, "closed")
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    # --- checkout and return -----------------------------------------------------------

    async def checkout(self, timeout: float) -> T:
        """A resource within ``timeout`` seconds, else ``TimeoutError``.

        Takes an idle one (by :attr:`order`), closing any that is stale or fails
        ``validate``; else waits for the next one made or returned, starting a
        creation unless enough are on their way. A creation's error is raised
        to the oldest waiting caller. Cancelled or timed out, a resource handed
        over at that moment is kept idle, never lost.
        """
        deadline = monotonic() + timeout
        while (record := self._pop_idle()) is not None:
            reason = self.stale(record, monotonic())
            if reason is None and self.maker.can_validate:
                budget = deadline - monotonic()
                if budget <= 0:
                    self._unpop(record)
                    raise TimeoutError("no time left to validate an idle resource")
                reason = await self.check(record, budget)
            if reason is None:
                return self._lend(record)
            self.discard(record, reason)
        waiter = self._waiters.join()
        if self.opening < self.live_waiters:
            self.spawn_open(retry=False)
        try:
            async with asyncio.timeout(max(deadline - monotonic(), 0.0)):
                record = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                if waiter.exception() is None:  # handed over just as this caller gave up
                    self.keep(waiter.result())
            else:
                self._waiters.leave(waiter)
            raise
        return self._lend(record)

    def leased_record(self, resource: T) -> ConnectionRecord[T] | None:
        """The record of ``resource`` if it is leased from this stock now."""
        record = self.leased.get(id(resource))
        if record is None or record.value is not resource:
            return None
        return record

    def take_back(self, resource: T) -> ConnectionRecord[T] | None:
        """The record of a returned ``resource``, no longer leased (``None``: it
        was closed under an abandoned lease). Hand it to :meth:`check_in`."""
        record = self.leased.pop(id(resource), None)
        if record is not None:
            record.last_used = monotonic()
        return record

    def check_in(
        self, record: ConnectionRecord[T], reason: str | None
    ) -> asyncio.Task[None] | None:
        """Keep a returned ``record`` (for a waiting caller or idle) unless
        ``reason`` says why not, or it went stale or surplus meanwhile; returns
        the task closing it, if it is closed."""
        if reason is None:  # re-read: the pool may have started closing meanwhile
            reason = self.stale(record, monotonic()) or self.surplus_reason()
        if reason is None:
            self._deliver(record)
            return None
        return self.discard(record, reason)

    def stale(self, record: ConnectionRecord[T], now: float) -> str | None:
        """Why ``record`` must not be used any more, or None."""
        if self.stopping or self._is_closing():
            return "closed"
        if record.broken:
            return "broken"
        if record.generation < self.generation:
            return "drained"
        if now >= record.expires:
            return "lifetime"
        return None

    def surplus_reason(self) -> str | None:
        """ "overflow" while more than ``max_size`` are open and nobody is queued."""
        if self.size > self.config.max_size and not (self.gate.waiting or self.live_waiters):
            return "overflow"
        return None

    def keep(self, record: ConnectionRecord[T]) -> None:
        """Deliver ``record`` unless it is stale or surplus; then close it."""
        reason = self.stale(record, monotonic()) or self.surplus_reason()
        if reason is None:
            self._deliver(record)
        else:
            self.discard(record, reason)

    def _pop_idle(self) -> ConnectionRecord[T] | None:
        idle = self.idle
        if not idle:
            return None
        return idle.popleft() if self.order == "fifo" else idle.pop()

    def _unpop(self, record: ConnectionRecord[T]) -> None:
        if self.order == "fifo":
            self.idle.appendleft(record)
        else:
            self.idle.append(record)

    def _lend(self, record: ConnectionRecord[T]) -> T:
        record.last_used = monotonic()
        self.leased[id(record.value)] = record
        return record.value

    def _deliver(self, record: ConnectionRecord[T]) -> None:
        """To the oldest caller waiting for a resource (not validated again), else idle."""
        if not self._waiters.give(record):
            self.idle.append(record)

    async def check(self, record: ConnectionRecord[T], budget: float) -> str | None:
        """Run ``validate`` on a record nobody else can see; None if it passed.

        If ``budget`` runs out first the resource is closed (a probe may be
        half done) and ``TimeoutError`` raised; so it is if the caller is cancelled.
        """
        try:
            ok = await self.maker.check(record.value, budget)
        except asyncio.CancelledError:
            self.discard(record, "cancelled")
            raise
        except TimeoutError:
            self.discard(record, "validation")
            raise
        record.last_checked = monotonic()
        return None if ok else "validation"

    # --- making and ending resources -----------------------------------------------------

    def spawn_open(self, *, retry: bool) -> asyncio.Task[Exception | None]:
        """Start one creation, counted in :attr:`size` at once; its resource is delivered.

        The task returns the creation's error (also handed to the oldest waiting
        caller), or None.
        """
        self.opening += 1
        task = asyncio.create_task(self._open_and_deliver(retry), name=f"resync-{self.name}-create")
        self._creating.add(task)
        task.add_done_callback(self._creating.discard)
        return task

    async def _open_and_deliver(self, retry: bool) -> Exception | None:
        try:
            record = await self._open(retry=retry)
        except Exception as exc:
            self.create_failures += 1
            self._waiters.fail(exc)
            return exc
        finally:
            self.opening -= 1
        self.keep(record)
        return None

    async def _open(self, *, retry: bool) -> ConnectionRecord[T]:
        """Make one resource (:meth:`ResourceMaker.make`) and record it."""
        value = await self.maker.make(retry=retry)
        now = monotonic()
        record = ConnectionRecord(
            value, now, expiry(now, self.config.max_lifetime), self.generation
        )
        self.records.add(record)
        self.stats.connection_creations += 1
        return record

    def discard(
        self, record: ConnectionRecord[T], reason: str, *, replace: bool = True
    ) -> asyncio.Task[None]:
        """Forget ``record`` now and close it in its own task (never interrupted).

        With ``replace`` the maintenance task is woken to refill up to min_size.
        """
        self.records.discard(record)
        self.closed_by_reason[reason] += 1
        logger.debug("pool '%s': closing a resource (%s)", self.name, reason)
        task = asyncio.create_task(self.maker.end(record.value), name=f"resync-{self.name}-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        if replace and not self.stopping:
            self.wake()  # replace it up to min_size
        return task

    # --- maintenance, drain and resize -------------------------------------------------

    def wake(self) -> None:
        """Run a maintenance pass now (no-op before :meth:`open`)."""
        if self._wakeup is not None:
            self._wakeup.set()

    async def _maintain(self) -> None:
        """Expire, reap, validate and refill until cancelled by :meth:`close_all`."""
        wakeup = self._wakeup
        assert wakeup is not None
        while True:
            cfg = self.config  # re-read: resize() replaces it
            tick = self._maintenance_interval or maintenance_tick(
                cfg.idle_timeout,
                cfg.max_lifetime,
                self.validate_interval if self.maker.can_validate else 0.0,
            )
            try:
                async with asyncio.timeout(tick):
                    await wakeup.wait()
            except TimeoutError:
                pass
            wakeup.clear()
            try:
                await self.maintain_once()
            except Exception:
                logger.exception("pool '%s': maintenance pass failed", self.name)

    async def maintain_once(self) -> None:
        """One maintenance pass (see the module docstring)."""
        now = monotonic()
        cfg = self.config
        for record in list(self.idle):
            reason = self.stale(record, now)
            if reason is not None:
                self.idle.remove(record)
                self.discard(record, reason)
        if cfg.idle_timeout > 0:
            for record in sorted(self.idle, key=lambda r: r.last_used):
                if self.size <= cfg.min_size:
                    break
                if now - record.last_used >= cfg.idle_timeout:
                    self.idle.remove(record)
                    self.discard(record, "idle")
        self.trim_surplus("overflow")
        if self.maker.can_validate and self.validate_interval > 0:
            await self._validate_idle(now)
        self.refill()

    def trim_surplus(self, reason: str) -> None:
        """Close idle resources, idle longest first, while more than ``max_size``
        are open and nobody is queued."""
        while self.idle and self.size > self.config.max_size and not self.gate.waiting:
            self.discard(self.idle.popleft(), reason)

    async def _validate_idle(self, now: float) -> None:
        for record in list(self.idle):
            if now - record.last_checked < self.validate_interval or record not in self.idle:
                continue
            self.idle.remove(record)  # nobody can check it out while it is being validated
            try:
                verdict = await self.check(record, self.config.connection_timeout)
            except TimeoutError:
                continue  # already closed
            if verdict is None:
                self.keep(record)
            else:
                self.discard(record, verdict)

    def refill(self) -> None:
        """Start creations up to ``min_size`` (with backoff); each is delivered when made.

        A creation that still fails is logged (or handed to a caller waiting for a
        resource); the next pass tries again.
        """
        missing = self.config.min_size - self.size
        if missing <= 0 or self.stopping or self._is_closing():
            return
        for _ in range(missing):
            self.spawn_open(retry=True).add_done_callback(self._log_refill)

    def _log_refill(self, task: asyncio.Task[Exception | None]) -> None:
        error = None if task.cancelled() else task.result()
        if error is not None:
            logger.warning(
                "pool '%s': could not replace a resource up to min_size=%d: %s: %s",
                self.name,
                self.config.min_size,
                type(error).__name__,
                self._scrub(error),
            )

    async def replace_all(self, interval: float | None) -> int:
        """Start a new generation and replace the idle resources one at a time.

        Spread over ``interval`` seconds (default: the kernel's
        :func:`~resync.core.pools.kernel.pacing.drain_interval` of every open
        resource); leased ones are replaced when they come back. Returns how
        many were open; ``ValueError`` for a negative ``interval``. Cancelled,
        the spreading stops; a creation already started finishes, and the
        rest are dropped by checkouts and maintenance.
        """
        spread = drain_interval(interval, len(self.records))  # raises for interval < 0
        self.generation += 1
        marked = len(self.records)
        stale = [r for r in self.idle if r.generation < self.generation]
        pause = spread / len(stale) if stale else 0.0
        for record in stale:
            if record in self.idle:
                self.idle.remove(record)
                self.discard(record, "drained", replace=False)
                await asyncio.shield(self.spawn_open(retry=True))
            if pause:
                await asyncio.sleep(pause)
        return marked

    def resize(self, config: ConnectionPoolConfig) -> None:
        """Take the pool's new sizes: close idle surplus, open up to a larger min_size."""
        self.config = config
        self.trim_surplus("resized")
        self.wake()
