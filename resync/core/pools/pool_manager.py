"""The pool manager: every pool of the process, started and stopped as one.

``ConnectionPoolManager`` builds the pools that settings enable (see
:mod:`~resync.core.pools.manager.specs`), plus any registered with :meth:`register`,
opens them concurrently and all-or-nothing, watches each with a background
health task, answers queries, and shuts everything down with one draining
:meth:`close_all`. ``get_connection_pool_manager()`` gives the process-wide
instance (one, however many callers race for it);
``reset_connection_pool_manager()`` closes and forgets it;
``current_connection_pool_manager()`` returns it without creating one and
``forget_connection_pool_manager()`` drops it without closing (test harnesses).

Settings are read when the manager starts, from the ``settings`` given to the
constructor or else this module's ``settings`` name (so a test can substitute
either).

A manager belongs to the event loop it was opened on: using it from another
loop raises :class:`~resync.core.exceptions.ManagerError` at once instead of
asyncio's "Future attached to a different loop" from deep inside a driver.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import resync.settings as settings_module
from resync.core.exceptions import ManagerError, ManagerStartError, PoolNotFoundError
from resync.core.pools.kernel.pool import ConnectionPool
from resync.core.pools.manager.budget import BudgetLine, check_budget
from resync.core.pools.manager.health import HealthMonitor, HealthState, PoolHealth
from resync.core.pools.manager.specs import build_pools, read_setting
from resync.core.redact import mask_url
from resync.settings import Settings

__all__ = [
    "ConnectionPoolManager",
    "current_connection_pool_manager",
    "forget_connection_pool_manager",
    "get_connection_pool_manager",
    "reset_connection_pool_manager",
]

logger = logging.getLogger("resync.manager")


class ConnectionPoolManager:
    """Owns the pools of one process; see the module docstring.

    Lifecycle: ``await initialize()`` (or ``async with``) opens every pool
    concurrently; if one fails, the ones already open are closed, no health
    task is left, and :class:`~resync.core.exceptions.ManagerStartError`
    names the failing pool. ``await close_all()`` stops admitting everywhere,
    cancels the health tasks, lets active leases finish up to the drain
    timeout, then closes every pool concurrently; it is idempotent.
    """

    def __init__(
        self,
        settings: Settings | Any | None = None,
        *,
        check_budget_on_start: bool = True,
    ) -> None:
        self._settings = settings
        self.pools: dict[str, ConnectionPool[Any]] = {}
        self.health: dict[str, PoolHealth] = {}
        self._monitors: dict[str, HealthMonitor] = {}
        self._registered: dict[str, tuple[ConnectionPool[Any], bool]] = {}
        # _initialized: the start succeeded; _shutdown: close_all() has begun (never reset).
        self._initialized = False
        self._shutdown = False
        self._lock: asyncio.Lock | None = None
        self._starting = False  # inside _start(), under _lock
        self._close_task: asyncio.Task[dict[str, int]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._check_budget_on_start = check_budget_on_start
        self.budget: list[BudgetLine] = []
        self.started_at: datetime | None = None

    @property
    def settings(self) -> Any:
        """The settings this manager reads (the module-level ones unless given)."""
        # Read at use, not import: lazy (see resync.settings) and patchable by tests.
        return self._settings if self._settings is not None else _module_settings()

    @property
    def is_open(self) -> bool:
        """True between a successful start and ``close_all()``."""
        return self._initialized and not self._shutdown

    @property
    def is_shutdown(self) -> bool:
        """True once ``close_all()`` has begun on a started manager (it stays closed)."""
        return self._shutdown

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the manager was started on (``None`` before the start)."""
        return self._loop

    @property
    def _health_check_tasks(self) -> set[asyncio.Task[None]]:
        return {m.task for m in self._monitors.values() if m.task is not None}

    def __repr__(self) -> str:
        state = "closed" if self._shutdown else "ready" if self._initialized else "new"
        return f"<ConnectionPoolManager [{state} | pools: {', '.join(self.pools) or '-'}]>"

    # --- start ---------------------------------------------------------------

    async def initialize(self) -> None:
        """Build and open every enabled pool, concurrently and all-or-nothing.

        Idempotent; concurrent callers share one start. Each pool's open is
        bounded by its own timeouts. If a *required* pool fails, every pool
        opened is closed again and ``ManagerStartError`` names the failing
        pool(s) and causes (passwords hidden). An *optional* pool that fails
        (``REDIS_REQUIRED=false``, ``HTTP_REQUIRED=false``, ``register(...,
        required=False)``) does not stop the start: it is listed with state
        ``down`` and opened in the background with backoff; its leases raise
        the pool's "not initialized" error (503 ``pool_not_ready``) until then.
        Raises ``ManagerError`` after ``close_all()``.
        """
        self._check_not_shut()
        if self._initialized:
            self.check_loop()
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._started():  # another caller finished the start while we waited
                return
            self._check_not_shut()
            self._starting = True
            try:
                await self._start()
            finally:
                self._starting = False
            if self.is_shutdown:  # close_all() was called while we were starting
                await self._abandon_start()

    def _check_not_shut(self) -> None:
        if self._shutdown:
            raise ManagerError(
                "Cannot initialize: the pool manager is shutdown; create a new manager "
                "(or call reset_connection_pool_manager())"
            )

    async def _abandon_start(self) -> None:
        """close_all() came during the start: close everything the start opened."""
        await asyncio.gather(*(m.stop() for m in self._monitors.values()), return_exceptions=True)
        await asyncio.gather(
            *(pool.close(drain_timeout=0) for pool in self.pools.values()),
            return_exceptions=True,
        )
        self._initialized = False
        logger.info("pool manager start abandoned: close_all() was called during it")
        raise ManagerError(
            "the pool manager was shut down while it was starting; every pool it "
            "opened is closed again (create a new manager to start over)"
        )

    def _started(self) -> bool:
        return self._initialized

    async def _start(self) -> None:
        specs = build_pools(self.settings)
        pools: dict[str, tuple[ConnectionPool[Any], bool]] = {
            spec.name: (pool, spec.required) for spec, pool in specs
        }
        for name, entry in self._registered.items():
            if name in pools:
                raise ManagerError(f"a pool named '{name}' is already configured from settings")
            pools[name] = entry
        names = list(pools)
        logger.info("opening pools: %s", ", ".join(names))
        results = await asyncio.gather(
            *(pool.initialize() for pool, _ in pools.values()), return_exceptions=True
        )
        failures = {
            name: result for name, result in zip(names, results, strict=True) if result is not None
        }
        # An optional pool that failed with an ordinary error does not stop the
        # start: it is adopted "down" and opened in the background (health.py).
        late = {
            name: exc
            for name, exc in failures.items()
            if not pools[name][1] and isinstance(exc, Exception)
        }
        if len(late) < len(failures):
            await asyncio.gather(
                *(pool.close(drain_timeout=0) for pool, _ in pools.values()),
                return_exceptions=True,
            )
            causes = {name: _describe(exc, pools[name][0]) for name, exc in failures.items()}
            detail = "; ".join(f"pool '{n}': {c}" for n, c in causes.items())
            first = next(iter(failures.values()))
            cancelled = [e for e in failures.values() if not isinstance(e, Exception)]
            if cancelled:
                raise cancelled[0]
            raise ManagerStartError(
                f"Failed to initialize connection pool manager: {detail}. "
                "Every pool already opened was closed; fix the setting(s) and restart",
                causes,
            ) from first
        self._loop = asyncio.get_running_loop()
        now = datetime.now(UTC)
        for name, (pool, required) in pools.items():
            self._adopt(name, pool, required, now, late.get(name))
        for name, exc in late.items():
            logger.warning(
                "optional pool '%s' could not open (%s); the service starts without it "
                "and keeps opening it in the background",
                name,
                _describe(exc, pools[name][0]),
            )
        self._initialized = True
        self.started_at = now
        logger.info("pool manager ready with %d pools: %s", len(self.pools), ", ".join(self.pools))
        if self._check_budget_on_start:
            processes = read_setting(self.settings, "WORKERS", 1) * read_setting(
                self.settings, "REPLICAS", 1
            )
            self.budget = await check_budget(list(self.pools.values()), processes)

    def _adopt(
        self,
        name: str,
        pool: ConnectionPool[Any],
        required: bool,
        now: datetime,
        open_error: Exception | None = None,
    ) -> None:
        self.pools[name] = pool
        health = PoolHealth(name, required, last_check=now)
        self.health[name] = health
        monitor = HealthMonitor(pool, health)
        self._monitors[name] = monitor
        if open_error is None:
            monitor.start()
        else:
            monitor.start_opening(_describe(open_error, pool))

    async def register(
        self, name: str, pool: ConnectionPool[Any], *, required: bool = False
    ) -> None:
        """Add a custom pool under ``name``, before or after start.

        Before start it is opened with the others (all-or-nothing); after
        start it is opened now and gets its own health task. A name already
        in use raises ``ManagerError``; so does registering after shutdown.
        """
        if not isinstance(pool, ConnectionPool):
            raise ManagerError(f"register() needs a ConnectionPool, got {type(pool).__name__}")
        if self._shutdown:
            raise ManagerError(f"cannot register pool '{name}': the pool manager is shutdown")
        if name in self.pools or name in self._registered:
            raise ManagerError(
                f"a pool named '{name}' is already registered; pick another name",
                pool_name=name,
            )
        if not self._initialized:
            self._registered[name] = (pool, required)
            return
        self.check_loop()
        self._registered[name] = (pool, required)
        await pool.initialize()
        self._adopt(name, pool, required, datetime.now(UTC))

    # --- queries -----------------------------------------------------------------

    async def get_pool(self, pool_name: str) -> ConnectionPool[Any] | None:
        """The pool named ``pool_name``, or None (also None before start)."""
        if not self._initialized:
            logger.warning("get_pool('%s') on a pool manager that is not initialized", pool_name)
            return None
        self.check_loop()
        return self.pools.get(pool_name)

    def pool(self, pool_name: str) -> ConnectionPool[Any]:
        """The pool named ``pool_name``; raises ``PoolNotFoundError`` naming the known ones."""
        found = self.pools.get(pool_name)
        if found is None:
            known = ", ".join(sorted(self.pools)) or "none (is the manager initialized?)"
            raise PoolNotFoundError(
                f"no pool named '{pool_name}'; configured pools: {known}", pool_name=pool_name
            )
        return found

    def get_pool_stats(self) -> dict[str, dict[str, Any]]:
        """``get_stats_snapshot()`` of every pool (same schema), plus its health."""
        stats: dict[str, dict[str, Any]] = {}
        for name, pool in self.pools.items():
            try:
                snap = pool.get_stats_snapshot()
            except Exception as exc:  # one broken pool must not hide the others
                logger.error("pool '%s': stats failed: %s", name, type(exc).__name__)
                snap = {"error": type(exc).__name__}
            health = self.health.get(name)
            snap["health"] = health.as_dict() if health else None
            stats[name] = snap
        return stats

    async def health_check_all(self) -> dict[str, bool]:
        """Check every pool now, concurrently; each bounded by its own timeout.

        Results also update the background health state. Empty before start.
        """
        if not self._initialized or self._shutdown:
            return {}
        self.check_loop()
        names = list(self._monitors)
        results = await asyncio.gather(*(self._monitors[n].check_now() for n in names))
        return dict(zip(names, results, strict=True))

    def readiness(self) -> dict[str, Any]:
        """What a readiness probe needs, from the background checks (no I/O).

        Ready when the manager is open and every required pool is healthy;
        optional pools may be degraded or down without failing readiness.
        """
        pools = {name: health.as_dict() for name, health in self.health.items()}
        blocking = [
            name
            for name, health in self.health.items()
            if health.required and health.state is not HealthState.HEALTHY
        ]
        ready = self._initialized and not self._shutdown and not blocking
        return {"ready": ready, "not_ready": blocking, "pools": pools}

    # --- shutdown ----------------------------------------------------------------

    async def close_all(self, drain_timeout: float | None = None) -> dict[str, int]:
        """Drain and close every pool concurrently; idempotent.

        Stops admitting in every pool at once, cancels the health tasks, gives
        active leases up to ``drain_timeout`` seconds (default: each pool's
        ``drain_timeout``) and closes the drivers. Returns, per pool, how many
        leases were still open at the deadline (also logged). Concurrent
        callers share one shutdown; cancelling a caller does not stop it.
        """
        if self._close_task is None and not self._initialized and self._starting:
            # A start is in flight: end the manager now, so the start closes
            # what it opened and raises instead of handing out an open manager.
            self._shutdown = True
            if self._lock is not None:
                async with self._lock:
                    pass
        if self._close_task is None:
            if not self._initialized:
                # Nothing is open; as in the seed, this does not end the manager.
                logger.debug("close_all() on a pool manager that never started")
                return {}
            self._shutdown = True
            self._close_task = asyncio.ensure_future(self._close(drain_timeout))
        return await asyncio.shield(self._close_task)

    async def _close(self, drain_timeout: float | None) -> dict[str, int]:
        logger.info("closing pools: %s", ", ".join(self.pools))
        await asyncio.gather(*(m.stop() for m in self._monitors.values()), return_exceptions=True)
        names = list(self.pools)
        results = await asyncio.gather(
            *(self.pools[n].close(drain_timeout) for n in names), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                logger.error("pool '%s' failed to close: %s", name, type(result).__name__)
        abandoned = {n: self.pools[n].leases_abandoned for n in names}
        still_open = {n: c for n, c in abandoned.items() if c}
        if still_open:
            logger.warning("leases still open at the drain deadline: %s", still_open)
        logger.info("pool manager closed (%d pools)", len(names))
        return abandoned

    async def __aenter__(self) -> ConnectionPoolManager:
        await self.initialize()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close_all()

    # --- helpers -----------------------------------------------------------------

    def check_loop(self) -> None:
        """Raise ``ManagerError`` if called on another event loop than the manager's.

        Before the start, or outside any running loop, there is nothing to check.
        """
        if self._loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if running is not self._loop:
            raise ManagerError(
                "This pool manager was opened on a different event loop and cannot be used "
                "from this one; open a new manager in this loop (tests: call "
                "reset_connection_pool_manager() between event loops)"
            )


def _describe(exc: BaseException, pool: ConnectionPool[Any]) -> str:
    text = pool.scrub(exc) if isinstance(exc, Exception) else type(exc).__name__
    return mask_url(f"{type(exc).__name__}: {text}")


# --- the process-wide instance ------------------------------------------------------

_manager_instance: ConnectionPoolManager | None = None
_manager_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None


def _lock_for_this_loop() -> asyncio.Lock:
    # One lock per loop: an asyncio.Lock that has waited on one loop cannot
    # be used on another, and test suites run one loop per test.
    global _manager_lock
    loop = asyncio.get_running_loop()
    if _manager_lock is None or _manager_lock[0] is not loop:
        _manager_lock = (loop, asyncio.Lock())
    return _manager_lock[1]


async def get_connection_pool_manager() -> ConnectionPoolManager:
    """The process-wide manager, created and started on first use.

    Any number of concurrent callers get one instance and one start. If the
    start fails the error propagates and the next call tries again. Raises
    ``ManagerError`` when the instance was opened on another event loop.
    """
    global _manager_instance
    instance = _manager_instance
    if instance is not None and instance.is_open:
        instance.check_loop()
        return instance
    async with _lock_for_this_loop():
        if _manager_instance is None or _manager_instance.is_shutdown:
            _manager_instance = ConnectionPoolManager()
        instance = _manager_instance
        try:
            await instance.initialize()
        except BaseException:
            if _manager_instance is instance:
                _manager_instance = None
            raise
        return instance


async def reset_connection_pool_manager(drain_timeout: float | None = None) -> None:
    """Close (draining) and forget the process-wide manager.

    A start in flight (another task inside ``get_connection_pool_manager()``)
    is waited for, and the manager it returns is the one closed: after any
    interleaving of gets and resets, the last reset leaves no manager open.
    If it belongs to another event loop that is gone, it is forgotten without
    closing (its loop can no longer run the close) and a warning is logged.
    """
    global _manager_instance
    # Under the same lock as the start: a reset that races a start waits for
    # it, then closes the manager that start handed out (never a stray one).
    async with _lock_for_this_loop():
        instance, _manager_instance = _manager_instance, None
        if instance is None:
            return
        await _close_instance(instance, drain_timeout)


async def _close_instance(instance: ConnectionPoolManager, drain_timeout: float | None) -> None:
    loop = instance.loop
    if loop is not None and loop is not asyncio.get_running_loop():
        logger.warning("forgetting a pool manager opened on another event loop without closing it")
        return
    try:
        await instance.close_all(drain_timeout)
    except Exception as exc:
        logger.error("error while closing the pool manager: %s", type(exc).__name__)


def current_connection_pool_manager() -> ConnectionPoolManager | None:
    """The process-wide manager if one was created (started or not), else None; no I/O."""
    return _manager_instance


def forget_connection_pool_manager() -> None:
    """Drop the process-wide manager without closing it (its pools stay as they are).

    For a harness that cannot await the close (a loop is already running in
    this thread); prefer ``reset_connection_pool_manager()``.
    """
    global _manager_instance
    _manager_instance = None


def _module_settings() -> Any:
    """This module's ``settings`` if a test substituted it, else the process settings."""
    substitute = globals().get("settings")
    return substitute if substitute is not None else settings_module.settings


def __getattr__(name: str) -> Any:
    # ``pool_manager.settings`` names the process settings, built on first use
    # (never at import); ``patch("resync.core.pools.pool_manager.settings")`` works.
    if name == "settings":
        return settings_module.settings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
