"""Drain, resize and failover retirement for the slot-based Redis pools.

A Redis lease holds one :class:`~resync.core.pools.redis.connections.Slot`; these
functions work on the pool's slot lists (``_idle``, ``_closed``, ``_slots``)
with the same rules the pool's maintenance follows:

- a leased slot is never touched: it is *marked* (its lifetime set to the
  past) and the pool closes it when the lease returns it, exactly as for an
  expired ``max_lifetime``;
- an idle slot is taken out of the idle list before any ``await``, so no lease
  can get it while it is being closed and reopened;
- reopening happens under an admission slot (as ``_top_up`` does), so leases
  plus connections being opened stay within ``max_size``; when the pool is
  busy the slot is only marked and replaced on its next return.

Every close is counted in ``connection_closures`` and every open in
``connection_creations`` by the pool's own ``_close_slot`` / ``_connect``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from resync.core.pools.kernel.pacing import drain_pause

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio.connection import AbstractConnection

    from resync.core.pools.redis.connections import Slot
    from resync.core.pools.redis.pool import RedisConnectionPool

__all__ = ["drain_slots", "resize_slots", "retire_slots"]

logger = logging.getLogger("resync.pool.redis")


def _mark(slot: Slot) -> None:
    """Make the pool close ``slot`` when its lease returns it (or maintenance finds it)."""
    slot.expires_at = -math.inf


async def drain_slots(pool: RedisConnectionPool, interval: float | None) -> int:
    """Replace every open connection of ``pool``; return how many were open.

    Leased connections are marked at once and replaced when returned; idle
    ones are closed and reopened one at a time, ``interval / count`` seconds
    apart. A connection that changed hands in the meantime is handled where
    it is then (replaced already: skipped; leased: marked). Cancelled, the
    pacing stops; marked connections are still replaced on return.
    """
    snapshot: list[tuple[Slot, AbstractConnection]] = [
        (slot, slot.conn) for slot in pool._slots if slot.opened
    ]
    idle = set(map(id, pool._idle))
    for slot, _conn in snapshot:
        if id(slot) not in idle:
            _mark(slot)
    pause = drain_pause(interval, len(snapshot))
    for slot, conn in snapshot:
        if pool._shutdown:
            break
        if id(slot) not in idle or slot.conn is not conn:
            continue  # leased at the start (marked above) or already replaced
        await _replace_idle(pool, slot)
        if pause:
            await asyncio.sleep(pause)
    if not pool._shutdown:
        await pool._top_up()
    return len(snapshot)


async def _replace_idle(pool: RedisConnectionPool, slot: Slot) -> None:
    """Close ``slot`` and reopen it, if it is still idle and the pool has room."""
    if slot not in pool._idle:
        _mark(slot)  # leased since the snapshot: closed on return
        return
    gate = pool._gate
    if not gate.try_acquire():
        _mark(slot)
        return
    try:
        pool._idle.remove(slot)
        await pool._close_slot(slot)  # now in _closed, a lease may reopen it first
        if slot in pool._closed and not pool._shutdown:
            pool._closed.remove(slot)
            try:
                await pool._connect(slot, pool.config.connection_timeout)
            except Exception as exc:  # left closed: the next lease reopens it
                logger.info("pool '%s': reopening during drain: %s", pool.name, pool._scrub(exc))
            else:
                pool._idle.append(slot)
    finally:
        gate.release()


async def retire_slots(pool: RedisConnectionPool, stale: Callable[[Slot], bool]) -> int:
    """Close every ``stale`` idle connection now and mark the stale leased ones.

    For a failover: unlike :func:`drain_slots` nothing is paced, because
    connections to a demoted master must stop taking writes at once. Returns
    how many connections were retired.
    """
    doomed = [slot for slot in pool._slots if slot.opened and stale(slot)]
    idle = [slot for slot in doomed if slot in pool._idle]
    pool._idle = [slot for slot in pool._idle if slot not in idle]
    for slot in doomed:
        if slot not in idle:
            _mark(slot)
    for slot in idle:
        await pool._close_slot(slot)
    if not pool._shutdown:
        await pool._top_up()
    return len(doomed)


async def resize_slots(pool: RedisConnectionPool) -> None:
    """Bring the connections in line with ``pool.config`` after ``resize()``.

    Shrinking closes idle connections above the new ``max_size`` (least
    recently used first) and marks enough leased ones to get there as their
    leases end; growing opens up to the new ``min_size`` when there is room.
    """
    cfg = pool.config
    driver = pool._connection_pool
    if driver is not None:
        driver.max_connections = cfg.max_size
    surplus = pool._open_connections() - cfg.max_size
    while surplus > 0 and pool._idle:
        slot = pool._idle.pop(0)
        await pool._close_slot(slot)
        surplus -= 1
    if surplus > 0:
        idle = pool._idle
        leased = [s for s in pool._slots if s.opened and s not in idle]
        for slot in leased[:surplus]:
            _mark(slot)
    # Unconnected slots above the cap are just objects: forget them.
    while len(pool._slots) > cfg.max_size and pool._closed:
        pool._slots.remove(pool._closed.pop(0))
    if not pool._shutdown:
        await pool._top_up()
