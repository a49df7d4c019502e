"""Small parts of the resource pool: the per-resource record and the callback glue.

Shared by :mod:`~resync.core.pools.resource.pool` (the public face and the
lease hooks) and :mod:`~resync.core.pools.resource.stock` (the records and
their maintenance); imports neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, Literal, TypeAlias, TypeVar, cast

from resync.core.exceptions import PoolConfigError, ResourceBroken

__all__ = [
    "CLOSE_REASONS",
    "ConnectionRecord",
    "Handoff",
    "IdleOrder",
    "check_options",
    "default_is_broken",
    "resolve",
]

T = TypeVar("T")
R = TypeVar("R")

#: Which idle resource a checkout takes: the one idle longest ("fifo": use
#: spreads evenly) or the one returned last ("lifo": a hot set stays in use and
#: the rest can be reaped by ``idle_timeout``).
IdleOrder: TypeAlias = Literal["fifo", "lifo"]

#: Why resources are closed; the keys of the pool's ``closed`` counters.
CLOSE_REASONS = (
    "broken",
    "cancelled",
    "validation",
    "reset",
    "lifetime",
    "idle",
    "overflow",
    "drained",
    "resized",
    "closed",
)


class ConnectionRecord(Generic[T]):
    """One open resource and what the pool knows about it (times are monotonic).

    ``expires`` is already jittered (the kernel's
    :func:`~resync.core.pools.kernel.pacing.expiry`); ``generation`` is
    compared with the stock's to replace everything opened before a
    ``drain()``; ``broken`` is set by ``mark_broken`` or a failed ping, and
    closes the resource on return.
    """

    __slots__ = ("broken", "created", "expires", "generation", "last_checked", "last_used", "value")

    def __init__(self, value: T, now: float, expires: float, generation: int) -> None:
        self.value = value
        self.created = now
        self.expires = expires
        self.generation = generation
        self.last_used = now
        self.last_checked = now
        self.broken = False

    def __repr__(self) -> str:
        return f"<ConnectionRecord {self.value!r} gen={self.generation}>"


class Handoff(Generic[T]):
    """The callers waiting for the next resource made or returned, oldest first.

    Each waits on a future of its own; one that gave up (cancelled or timed
    out) is skipped, so a resource is never handed to nobody.
    """

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[T]] = deque()

    @property
    def live(self) -> int:
        """Callers still waiting now."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    def join(self) -> asyncio.Future[T]:
        """A new place at the back of the queue; await it for the resource."""
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def leave(self, waiter: asyncio.Future[T]) -> None:
        """Forget ``waiter`` (its caller gave up before anything was handed over)."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def give(self, item: T) -> bool:
        """Hand ``item`` to the oldest live waiter; False if nobody waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return True
        return False

    def fail(self, error: BaseException, *, everyone: bool = False) -> None:
        """Raise ``error`` to the oldest live waiter (or to all, with ``everyone``)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
                if not everyone:
                    return


async def resolve(value: Awaitable[R] | R) -> R:
    """Await ``value`` if a callback returned an awaitable (sync or async callbacks)."""
    if inspect.isawaitable(value):
        return cast(R, await value)
    return value


def default_is_broken(error: BaseException) -> bool:
    """A holder's error that means its resource is unusable: ``ResourceBroken``."""
    return isinstance(error, ResourceBroken)


def check_options(
    name: str,
    *,
    overflow: int,
    order: str,
    close_timeout: float,
    create_timeout: float,
    validate_interval: float | None,
    maintenance_interval: float | None,
    callbacks: dict[str, Callable[..., object] | None],
) -> None:
    """Raise ``PoolConfigError`` naming the pool for an option that cannot work."""

    def require(ok: bool, rule: str) -> None:
        if not ok:
            raise PoolConfigError(f"{rule} (pool '{name}')", pool_name=name)

    require(
        isinstance(overflow, int) and not isinstance(overflow, bool) and overflow >= 0,
        f"overflow must be an integer >= 0, got {overflow!r}",
    )
    require(order in ("fifo", "lifo"), f"order must be 'fifo' or 'lifo', got {order!r}")
    require(close_timeout > 0, f"close_timeout must be > 0, got {close_timeout}")
    require(
        create_timeout > 0,
        f"create_timeout must be > 0, got {create_timeout}",
    )
    require(
        validate_interval is None or validate_interval >= 0,
        f"validate_interval must be >= 0 (0 = never), got {validate_interval}",
    )
    require(
        maintenance_interval is None or maintenance_interval > 0,
        f"maintenance_interval must be > 0, got {maintenance_interval}",
    )
    for label, callback in callbacks.items():
        required = label in ("create", "close")
        require(
            callable(callback) or (callback is None and not required),
            f"{label} must be a callable, got {type(callback).__name__}",
        )
