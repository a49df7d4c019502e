"""The user's callbacks for one resource, each bounded and logged: make, check, end.

:class:`ResourceMaker` owns ``create``, ``close`` and ``validate`` with their
timeouts and the retry policy of creations; it knows one resource at a time and
keeps no collection (that is :class:`~resync.core.pools.resource.stock.ResourceStock`).
Callbacks may be sync (run on the loop) or async.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from resync.core.pools.kernel.stats import ConnectionPoolStats
from resync.core.pools.resource.support import resolve
from resync.core.resilience import RetryPolicy

__all__ = ["ResourceMaker"]

logger = logging.getLogger("resync.pool")

T = TypeVar("T")


def _always(_: BaseException) -> bool:
    return True


class ResourceMaker(Generic[T]):
    """Runs the callbacks of one pool (``name``) on one resource at a time."""

    def __init__(
        self,
        name: str,
        stats: ConnectionPoolStats,
        *,
        create: Callable[[], Awaitable[T]] | Callable[[], T],
        close: Callable[[T], object],
        validate: Callable[[T], Awaitable[bool]] | Callable[[T], bool] | None,
        retry: RetryPolicy,
        create_timeout: float,
        close_timeout: float,
        scrub: Callable[[object], str],
    ) -> None:
        self.name = name
        self.stats = stats
        self.retry = retry
        self._create = create
        self._close = close
        self._validate = validate
        self._create_timeout = create_timeout
        self._close_timeout = close_timeout
        self._scrub = scrub

    @property
    def can_validate(self) -> bool:
        """True when the pool was given a ``validate`` callback."""
        return self._validate is not None

    async def make(self, *, retry: bool) -> T:
        """A new resource from ``create``; with ``retry``, after backoff and jitter.

        Each attempt is bounded by ``create_timeout`` (a ``TimeoutError``), not by
        the lease that may be waiting for it: a creation outlives an impatient
        caller. Failed attempts are logged; the last error is raised.
        Cancelled, the attempt in flight is cancelled.
        """
        if retry:
            return await self.retry.call(
                self._create_once, retry_if=_always, on_retry=self._log_retry
            )
        return await self._create_once()

    async def _create_once(self) -> T:
        async with asyncio.timeout(self._create_timeout):
            return await resolve(self._create())

    def _log_retry(self, attempt: int, error: BaseException) -> None:
        logger.warning(
            "pool '%s': creating a resource failed (attempt %d of %d): %s: %s",
            self.name,
            attempt,
            self.retry.max_attempts,
            type(error).__name__,
            self._scrub(error),
        )

    async def check(self, value: T, budget: float) -> bool:
        """Does ``validate`` pass on ``value`` within ``budget`` seconds?

        A ``validate`` that raises counts as failed (logged). Raises
        ``TimeoutError`` when ``budget`` runs out first; a cancellation
        propagates. The caller must close the resource in both cases (a probe
        may be half done).
        """
        validate = self._validate
        assert validate is not None
        deadline = asyncio.timeout(budget)
        try:
            async with deadline:
                return await resolve(validate(value))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if deadline.expired():
                raise TimeoutError(f"validating a resource took over {budget:.3g}s") from exc
            logger.info(
                "pool '%s': validation raised %s; closing the resource",
                self.name,
                type(exc).__name__,
            )
            return False

    async def end(self, value: T) -> None:
        """Run ``close`` on ``value``, bounded by ``close_timeout``; errors are logged.

        Counted in ``connection_closures`` however it ends, cancelled included
        (the stock runs it in a task of its own, so a lease's cancellation
        never interrupts it).
        """
        try:
            async with asyncio.timeout(self._close_timeout):
                await resolve(self._close(value))
        except Exception as exc:
            logger.warning(
                "pool '%s': closing a resource failed: %s: %s",
                self.name,
                type(exc).__name__,
                self._scrub(exc),
            )
        finally:
            self.stats.connection_closures += 1
