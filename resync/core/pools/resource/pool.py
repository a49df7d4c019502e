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

The records, the callers waiting for a resource and the maintenance task
belong to a :class:`~resync.core.pools.resource.stock.ResourceStock`; the task,
started by ``initialize()``, expires, reaps (``idle_timeout``, down to
``min_size``), validates and refills. ``close()`` waits for leases up to ``drain_timeout``,
cancels it and creations in flight, and closes every resource -- idle or held
by an abandoned lease -- each bounded by ``close_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from resync.core.pools.kernel.pool import ConnectionPool, ConnectionPoolConfig
from resync.core.pools.resource.maker import ResourceMaker
from resync.core.pools.resource.stock import ResourceStock
from resync.core.pools.resource.support import (
    ConnectionRecord,
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
        self._validate = validate
        self._reset = reset
        self._is_broken = is_broken
        self._reuse_after_cancel = reuse_after_cancel
        self._retry = create_retry
        self.overflow = overflow
        self.circuit_breaker = build_circuit_breaker(config.pool_name, circuit_breaker)
        self._gate.resize(config.max_size + overflow)
        maker = ResourceMaker(
            config.pool_name,
            self.stats,
            create=create,
            close=close,
            validate=validate,
            retry=create_retry,
            create_timeout=create_timeout,
            close_timeout=close_timeout,
            scrub=self.scrub,
        )
        self._stock: ResourceStock[T] = ResourceStock(
            config.pool_name,
            config,
            self.stats,
            self._gate,
            maker,
            order=order,
            validate_interval=(
                config.health_check_interval if validate_interval is None else validate_interval
            ),
            maintenance_interval=maintenance_interval,
            is_closing=lambda: self._shutdown,
            scrub=self.scrub,
        )

    # --- public extras ------------------------------------------------------------

    @property
    def order(self) -> IdleOrder:
        """Which idle resource a checkout takes: "fifo" (idle longest) or "lifo"."""
        return self._stock.order

    @order.setter
    def order(self, order: IdleOrder) -> None:
        self._stock.order = order

    @property
    def closed_by_reason(self) -> Counter[str]:
        """Resources closed, by reason ("broken", "validation", "idle", ...)."""
        return self._stock.closed_by_reason

    @property
    def create_failures(self) -> int:
        """Creations that failed (after their retries)."""
        return self._stock.create_failures

    def mark_broken(self, resource: T) -> bool:
        """Close ``resource`` when its lease ends instead of returning it.

        For a holder that finds its resource unusable without raising. Returns
        False if ``resource`` is not leased from this pool now.
        """
        record = self._stock.leased_record(resource)
        if record is None:
            return False
        record.broken = True
        return True

    def resources(self) -> list[T]:
        """Every open resource now, idle or leased (a snapshot; for inspection)."""
        return [record.value for record in self._stock.records]

    @property
    def size(self) -> int:
        """Resources open now, idle or leased, plus creations in flight."""
        return self._stock.size

    # --- lifecycle hooks ------------------------------------------------------------

    async def _setup_pool(self) -> None:
        failures = await self._stock.open()
        if failures:
            first = failures[0]
            wanted = self.config.min_size
            raise self.errors.setup(
                f"Failed to setup pool '{self.name}': could not create {len(failures)} of "
                f"{wanted} resources (min_size) after {self._retry.max_attempts} attempt(s) "
                f"each: {type(first).__name__}: {self.scrub(first)}",
                pool_name=self.name,
            ) from first

    async def _close_pool(self) -> None:
        await self._stock.close_all(self._closed_error)

    # --- checkout and return --------------------------------------------------------

    async def _acquire_connection(self, timeout: float) -> T:
        return await self._stock.checkout(timeout)

    async def _release_connection(self, connection: T, error: BaseException | None) -> None:
        stock = self._stock
        record = stock.take_back(connection)
        if record is None:  # closed under an abandoned lease by close()
            return
        reason = self._return_reason(record, error) or stock.stale(record, record.last_used)
        if reason is None and self._reset is not None:
            try:
                async with asyncio.timeout(self.config.connection_timeout):
                    await resolve(self._reset(connection))
            except asyncio.CancelledError:
                stock.discard(record, "cancelled")
                raise
            except Exception as exc:
                logger.warning(
                    "pool '%s': reset failed, closing the resource: %s: %s",
                    self.name,
                    type(exc).__name__,
                    self.scrub(exc),
                )
                reason = "reset"
        closing = stock.check_in(record, reason)
        if closing is not None:
            await asyncio.shield(closing)

    def _return_reason(
        self, record: ConnectionRecord[T], error: BaseException | None
    ) -> str | None:
        if record.broken:
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

    # --- live operations ----------------------------------------------------------------

    async def _replace_connections(self, interval: float | None) -> int:
        return await self._stock.replace_all(interval)

    def _admission_capacity(self, max_size: int) -> int:
        # Overflow leases stay admitted on top of max_size (the base resizes the
        # gate, or the adaptive limit's ceiling, to this).
        return max_size + self.overflow

    async def _apply_resize(self) -> None:
        self._stock.resize(self.config)

    # --- health, stats, errors ----------------------------------------------------------------

    async def _ping(self, connection: T) -> None:
        if self._validate is None:
            return
        if not await resolve(self._validate(connection)):
            self.mark_broken(connection)
            raise ConnectionError(f"a resource of pool '{self.name}' failed validation")

    def _idle_connections(self) -> int:
        return len(self._stock.idle)

    def _details(self) -> dict[str, Any]:
        stock = self._stock
        return {
            "open": len(stock.records),
            "in_use": len(stock.leased),
            "opening": stock.opening,
            "overflow": self.overflow,
            "order": self.order,
            "generation": stock.generation,
            "create_failures": stock.create_failures,
            "closed": dict(stock.closed_by_reason),
        }

    def _is_backend_failure(self, error: BaseException) -> bool:
        return self._is_broken(error) or super()._is_backend_failure(error)
