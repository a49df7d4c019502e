"""The resource pool's background work, bulk operations, and single-resource chores.

Functions over a :class:`~resync.core.pools.resource.pool.ResourcePool`'s
private state, kept apart so the pool module stays the checkout/return state
machine (the same split as :mod:`~resync.core.pools.kernel.lease`).

The maintenance task (:func:`run_maintenance`) wakes every tick -- a quarter of
the shortest of ``idle_timeout``, ``max_lifetime`` and ``validate_interval`` --
and whenever a resource was closed; each pass:

1. closes idle resources that expired, were drained or belong to a closing pool;
2. closes resources idle longer than ``idle_timeout``, oldest first, while more
   than ``min_size`` are open;
3. closes idle surplus above ``max_size`` (overflow kept for a queued caller);
4. validates idle resources not checked for ``validate_interval`` seconds;
5. creates resources up to ``min_size``, each with backoff and jitter.

A failed pass is logged and the next one runs at the next tick. Cancelling the
task (``close()`` does) cancels creations in flight; closes already started
finish in their own tasks.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from time import monotonic
from typing import TYPE_CHECKING, Any, TypeVar

from resync.core.pools.resource.support import Entry, expiry, maintenance_tick, resolve

if TYPE_CHECKING:
    from resync.core.pools.resource.pool import ResourcePool

__all__ = [
    "check_entry",
    "close_entry",
    "close_everything",
    "maintain_once",
    "open_entry",
    "open_initial",
    "refill",
    "replace_all",
    "run_maintenance",
    "trim_surplus",
]

logger = logging.getLogger("resync.pool")

T = TypeVar("T")


def _always(_: BaseException) -> bool:
    return True


async def open_entry(pool: ResourcePool[T], *, retry: bool) -> Entry[T]:
    """Create one resource (with backoff and jitter when ``retry``) and register it.

    Each attempt is bounded by ``create_timeout`` (default 30 s), not by the
    lease that may be waiting for it: a creation outlives an impatient caller.
    The caller counts it in ``pool._opening`` (``ResourcePool._spawn_open`` does).
    """
    if retry:
        value = await pool._retry.call(
            partial(_create_once, pool), retry_if=_always, on_retry=partial(_log_retry, pool)
        )
    else:
        value = await _create_once(pool)
    now = monotonic()
    entry = Entry(value, now, expiry(now, pool.config.max_lifetime), pool._generation)
    pool._entries.add(entry)
    pool.stats.connection_creations += 1
    return entry


async def _create_once(pool: ResourcePool[T]) -> T:
    async with asyncio.timeout(pool._create_timeout):
        return await resolve(pool._create())


def _log_retry(pool: ResourcePool[Any], attempt: int, error: BaseException) -> None:
    logger.warning(
        "pool '%s': creating a resource failed (attempt %d of %d): %s: %s",
        pool.name,
        attempt,
        pool._retry.max_attempts,
        type(error).__name__,
        pool._scrub(error),
    )


async def close_entry(pool: ResourcePool[T], entry: Entry[T]) -> None:
    """Run ``close`` on one resource, bounded by ``close_timeout``; errors are logged."""
    try:
        async with asyncio.timeout(pool._close_timeout):
            await resolve(pool._close(entry.value))
    except Exception as exc:
        logger.warning(
            "pool '%s': closing a resource failed: %s: %s",
            pool.name,
            type(exc).__name__,
            pool._scrub(exc),
        )
    finally:
        pool.stats.connection_closures += 1


async def check_entry(pool: ResourcePool[T], entry: Entry[T], budget: float) -> str | None:
    """Run ``validate`` on an entry nobody else can see; None if it passed.

    If ``budget`` runs out first the resource is closed (a probe may be
    half done) and ``TimeoutError`` raised; so it is if the caller is cancelled.
    """
    validate = pool._validate
    assert validate is not None
    deadline = asyncio.timeout(budget)
    try:
        async with deadline:
            ok = await resolve(validate(entry.value))
    except asyncio.CancelledError:
        pool._discard(entry, "cancelled")
        raise
    except Exception as exc:
        if deadline.expired():
            pool._discard(entry, "validation")
            raise TimeoutError(f"validating a resource took over {budget:.3g}s") from exc
        logger.info(
            "pool '%s': validation raised %s; closing the resource",
            pool.name,
            type(exc).__name__,
        )
        ok = False
    entry.last_checked = monotonic()
    return None if ok else "validation"


async def close_everything(pool: ResourcePool[Any]) -> None:
    """``close()``'s last step: stop maintenance and creations, close every resource."""
    pool._stopping = True
    task, pool._maintenance = pool._maintenance, None
    pending: list[asyncio.Task[Any]] = [*pool._creating]
    if task is not None:
        pending.append(task)
    for waiting in pending:
        waiting.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    while pool._waiters:  # leases still checking out after the drain deadline
        waiter = pool._waiters.popleft()
        if not waiter.done():
            waiter.set_exception(pool._closed_error())
    # Idle, still held by an abandoned lease, or made by a creation that won
    # the race with its cancellation: every open resource is closed now.
    pool._idle.clear()
    pool._in_use.clear()
    for entry in list(pool._entries):
        pool._discard(entry, "closed")
    if pool._closing:
        await asyncio.gather(*list(pool._closing), return_exceptions=True)


async def open_initial(pool: ResourcePool[Any]) -> None:
    """Open ``min_size`` resources concurrently, each with backoff; all or nothing.

    Raises the pool's setup error naming the pool and the first cause; the
    resources already made stay registered for the base pool's cleanup to close.
    """
    wanted = pool.config.min_size
    results = await asyncio.gather(*(pool._spawn_open(retry=True) for _ in range(wanted)))
    failures = [error for error in results if error is not None]
    if failures:
        first = failures[0]
        raise pool.errors.setup(
            f"Failed to setup pool '{pool.name}': could not create {len(failures)} of "
            f"{wanted} resources (min_size) after {pool._retry.max_attempts} attempt(s) "
            f"each: {type(first).__name__}: {pool._scrub(first)}",
            pool_name=pool.name,
        ) from first


async def run_maintenance(pool: ResourcePool[Any]) -> None:
    """Background task: expire, reap, validate and refill until cancelled by close()."""
    wakeup = pool._wakeup
    assert wakeup is not None
    while True:
        cfg = pool.config  # re-read: resize() replaces it
        tick = pool._maintenance_interval or maintenance_tick(
            cfg.idle_timeout,
            cfg.max_lifetime,
            pool._validate_interval if pool._validate is not None else 0.0,
        )
        try:
            async with asyncio.timeout(tick):
                await wakeup.wait()
        except TimeoutError:
            pass
        wakeup.clear()
        try:
            await maintain_once(pool)
        except Exception:
            logger.exception("pool '%s': maintenance pass failed", pool.name)


async def maintain_once(pool: ResourcePool[Any]) -> None:
    now = monotonic()
    cfg = pool.config
    for entry in list(pool._idle):
        reason = pool._stale(entry, now)
        if reason is not None:
            pool._idle.remove(entry)
            pool._discard(entry, reason)
    if cfg.idle_timeout > 0:
        for entry in sorted(pool._idle, key=lambda e: e.last_used):
            if pool.size <= cfg.min_size:
                break
            if now - entry.last_used >= cfg.idle_timeout:
                pool._idle.remove(entry)
                pool._discard(entry, "idle")
    trim_surplus(pool, "overflow")
    if pool._validate is not None and pool._validate_interval > 0:
        await _validate_idle(pool, now)
    refill(pool)


def trim_surplus(pool: ResourcePool[Any], reason: str) -> None:
    while pool._idle and pool.size > pool.config.max_size and not pool._gate.waiting:
        pool._discard(pool._idle.popleft(), reason)


async def _validate_idle(pool: ResourcePool[Any], now: float) -> None:
    for entry in list(pool._idle):
        if now - entry.last_checked < pool._validate_interval or entry not in pool._idle:
            continue
        pool._idle.remove(entry)  # nobody can check it out while it is being validated
        budget = pool.config.connection_timeout
        try:
            verdict = await pool._check(entry, budget)
        except TimeoutError:
            continue  # already closed
        if verdict is None:
            pool._keep_idle(entry)
        else:
            pool._discard(entry, verdict)


def refill(pool: ResourcePool[Any]) -> None:
    """Start creations up to ``min_size`` (with backoff); each is delivered when made.

    A creation that still fails is logged (or handed to a caller waiting for a
    resource); the next pass tries again.
    """
    missing = pool.config.min_size - pool.size
    if missing <= 0 or pool._stopping or pool._shutdown:
        return
    for _ in range(missing):
        pool._spawn_open(retry=True).add_done_callback(partial(_log_refill, pool))


def _log_refill(pool: ResourcePool[Any], task: asyncio.Task[Exception | None]) -> None:
    error = None if task.cancelled() else task.result()
    if error is not None:
        logger.warning(
            "pool '%s': could not replace a resource up to min_size=%d: %s: %s",
            pool.name,
            pool.config.min_size,
            type(error).__name__,
            pool._scrub(error),
        )


async def replace_all(pool: ResourcePool[Any], interval: float | None) -> int:
    pool._generation += 1
    marked = len(pool._entries)
    stale = [e for e in pool._idle if e.generation < pool._generation]
    spread = min(float(marked), 30.0) if interval is None else interval
    pause = spread / len(stale) if stale else 0.0
    for entry in stale:
        if entry in pool._idle:
            pool._idle.remove(entry)
            pool._discard(entry, "drained", replace=False)
            await asyncio.shield(pool._spawn_open(retry=True))
        if pause:
            await asyncio.sleep(pause)
    return marked
