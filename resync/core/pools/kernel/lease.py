"""The lease: one admission slot plus one driver connection, as ``async with``.

This is the hot path shared by every backend, written as a class rather than
``@asynccontextmanager`` because a generator-based context manager costs about
twice as much per lease. The rules it keeps:

- a slot is taken (at once, or after a strictly FIFO wait) before the backend is
  asked for a connection, so ``max_size`` bounds leases for every backend;
- whatever interrupts the lease -- timeout, backend error, cancellation at any
  ``await`` -- the slot is released exactly once (``finally``), and the backend
  is told how the lease ended so it can discard a connection in an unknown state;
- errors of the backend are mapped to the pool's error family on the way out,
  chained with ``from``;
- with ``leak_detection_threshold`` set, a lease held too long is reported
  (:mod:`resync.core.pools.kernel.leak_watch`); at 0 that costs one test per side.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

from resync.core.pools.kernel.admission import CLOSED, GRANTED
from resync.core.pools.kernel.leak_watch import LeakWatch
from resync.core.pools.kernel.state import PoolState

_READY = PoolState.READY

if TYPE_CHECKING:
    from resync.core.pools.kernel.pool import ConnectionPool

__all__ = ["Lease"]

logger = logging.getLogger("resync.pool")

T = TypeVar("T")


class Lease(Generic[T]):
    """``async with pool.get_connection() as conn``: hold one connection.

    Entering waits at most ``connection_timeout`` for a slot and a connection
    and raises the pool family's timeout error otherwise; a cancelled caller
    never keeps a slot. Leaving returns the connection (the backend commits,
    rolls back or discards it) and frees the slot even if that return fails or
    is cancelled. A ``Lease`` object is single-use.
    """

    __slots__ = ("_conn", "_granted_at", "_leak", "_pool", "_state")

    def __init__(self, pool: ConnectionPool[T]) -> None:
        self._pool = pool
        self._state = 0  # 0 new, 1 held, 2 done
        self._leak: LeakWatch | None = None

    async def __aenter__(self) -> T:
        if self._state:
            raise RuntimeError("a Lease can be entered only once; call get_connection() again")
        pool = self._pool
        if pool._state is not _READY or pool._loop is not asyncio.get_running_loop():
            pool._check_usable()
        stats = pool.stats
        breaker = pool.circuit_breaker
        if breaker is not None and not breaker.allow():
            stats.pool_misses += 1
            raise pool._unavailable_error()
        gate = pool._gate
        start = perf_counter()
        timeout = pool.config.connection_timeout
        if not gate.try_acquire():
            if gate.is_full():
                stats.pool_misses += 1
                stats.pool_overloads += 1
                raise pool._overloaded_error()
            stats.pool_waits += 1
            stats.waiting_connections += 1
            try:
                outcome = await gate.wait(timeout)
            except BaseException:
                stats.pool_misses += 1
                raise
            finally:
                stats.waiting_connections -= 1
            if outcome != GRANTED:
                stats.pool_misses += 1
                if outcome == CLOSED:
                    raise pool._closed_error()
                stats.pool_exhaustions += 1
                raise pool._timeout_error(perf_counter() - start)
        # A slot is held from here on; every exit path below must release it.
        try:
            remaining = timeout - (perf_counter() - start)
            conn = await pool._acquire_connection(max(remaining, 0.001))
        except BaseException as exc:
            gate.release()
            stats.pool_misses += 1
            mapped = pool._on_acquire_error(exc, perf_counter() - start)
            if mapped is exc:
                raise
            raise mapped from exc
        self._conn = conn
        self._state = 1
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
        if pool._has_acquire_hook:
            try:
                await pool.on_connection_acquired(conn)
            except BaseException:
                await self.__aexit__(*sys.exc_info())
                raise
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != 1:
            return
        self._state = 2
        pool = self._pool
        conn = self._conn
        del self._conn
        held = perf_counter() - self._granted_at
        try:
            if pool._has_release_hook:
                try:
                    await pool.on_connection_released(conn)
                except Exception:
                    logger.exception("pool '%s': on_connection_released failed", pool.name)
            await pool._release_connection(conn, exc)
        finally:
            pool.stats.active_connections -= 1
            pool.use_histogram.observe(held)
            if pool.circuit_breaker is not None:
                pool._record_outcome(exc)
            pool._gate.release()
            if self._leak is not None:
                self._leak.finish(held)
        if exc is not None:
            mapped = pool._map_error(exc)
            if mapped is not exc:
                raise mapped from exc
