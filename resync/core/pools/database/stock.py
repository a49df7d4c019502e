"""The open connections of one database pool and the rules for reusing them.

:class:`~resync.core.pools.database.pool.DatabaseConnectionPool` runs its engine with
SQLAlchemy's ``NullPool`` and keeps the connections here, because
``QueuePool`` cannot close idle connections above a floor, expire connections
at jittered times, or leave resync's FIFO gate as the only queue. The rules:

- **Reuse**: idle connections are a LIFO stack, so under light load the same few
  stay warm and the rest age out (the oldest idle sits at the bottom).
- **Validation**: a connection used successfully within :attr:`ConnectionStock.bypass`
  seconds (:data:`HOT_WINDOW`, HikariCP's ``aliveBypassWindowMs``) and not
  suspected since -- no other connection found dead or invalidated since it
  was last used, not retired by a drain -- is handed out with no I/O and no
  timer; asyncpg's ``is_closed()`` is read every time for free. With asyncpg,
  an older one is checked by the transaction's own ``BEGIN``, sent at
  checkout instead of with the first statement -- the same round trip, now
  also a liveness check; a connection that fails it (killed backend,
  restarted server) is dropped and the next is tried, then a new one is
  opened, all inside the caller's timeout, so the caller never sees the dead
  one. A hot connection's ``BEGIN`` goes with the first statement
  (:meth:`ConnectionStock.lazy_begin`); if that ``BEGIN`` finds the
  connection dead -- nothing of the lease has reached the server yet -- the
  lease continues, transparently, on a freshly opened connection (once), so
  the window costs the session and Core kinds no failed lease either. An
  empty hot lease sends nothing at all. Drivers without the ``BEGIN`` hook
  are pinged when idle longer than ``ping_after`` or when another
  connection was found dead since. SQLite files do not disconnect and are
  never pinged.
- **Reset** and **lifetime**: see :mod:`~resync.core.pools.database.record`.
  Expired connections are closed when found idle, never under a lease.
- **Replacement** (``drain()``, a read-only server): :meth:`ConnectionStock.retire_all`
  starts a new *generation*; a connection of an older one is never handed out
  again -- idle ones are closed (:meth:`ConnectionStock.replace_retired`), leased
  ones when they come back -- so every later lease runs on a fresh connection.
- **Idle timeout**: maintenance (:meth:`ConnectionStock.start_maintenance`) closes connections idle
  longer than ``idle_timeout`` while more than ``min_size`` are open, and
  reopens up to ``min_size`` under an admission slot, so ``max_size`` stays a
  hard bound on open connections. It wakes at the kernel's
  :func:`~resync.core.pools.kernel.pacing.maintenance_tick`.
- **Reconnecting**: the stock's own connects (the refill up to ``min_size``,
  after a drain or a read-only server too) ask the pool's
  :class:`~resync.core.pools.kernel.pacing.ConnectBackoff` first: none while
  the pool's circuit breaker is open (in half-open a refill may be the
  probe), and after a failed one the next waits 0.5 s, doubling up to 30 s.
  A lease's connect is the lease's own: the breaker refuses leases while the
  server is down, so only the half-open probe connects then.
- **Closing**: gracefully within ``connection_timeout``; if that fails, stalls
  or is cancelled, the socket is aborted synchronously -- a connection is
  never left open.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from time import monotonic

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from resync.core.exceptions import DatabaseConnectionLostError
from resync.core.pools.database.errors import driver_connection_gone, error_chain
from resync.core.pools.database.record import (
    ConnectionRecord,
    drop_connection,
    open_connection,
    ping_connection,
)
from resync.core.pools.database.sqla_internals import await_
from resync.core.pools.kernel.admission import AdmissionGate
from resync.core.pools.kernel.config import ConnectionPoolConfig
from resync.core.pools.kernel.loops import start_task, stop_task
from resync.core.pools.kernel.pacing import ConnectBackoff, drain_pause, maintenance_tick

__all__ = ["HOT_WINDOW", "ConnectionStock"]

#: Seconds after a successful use during which a lease trusts a connection
#: without a round trip (HikariCP's aliveBypassWindowMs, 500 ms).
HOT_WINDOW = 0.5

logger = logging.getLogger("resync.pool")


class ConnectionStock:
    """The idle and leased connections of one pool, and the means to open, check
    and close them.

    Idle records sit in :attr:`idle`; a leased one is filed under its session
    (:meth:`lend`) until the lease ends (:meth:`take_back`). Every method keeps
    its connection accounted for whatever interrupts it: a cancelled caller
    never leaves a connection open.
    """

    def __init__(
        self,
        name: str,
        config: ConnectionPoolConfig,
        *,
        gate: AdmissionGate,
        is_ready: Callable[[], bool],
        ping_after: float,
        scrub: Callable[[object], str],
        backoff: ConnectBackoff | None = None,
        begin_timeout: Callable[[BaseException], BaseException] | None = None,
    ) -> None:
        self.name = name
        #: The error for a lazy BEGIN that timed out (the pool's timeout error).
        self._begin_timeout = begin_timeout
        self.config = config
        # The pool's: connections are reopened under an admission slot, only while ready.
        self._gate = gate
        self._is_ready = is_ready
        self.ping_after = ping_after
        self.engine: AsyncEngine | None = None
        self.idle: deque[ConnectionRecord] = deque()  # oldest idle on the left
        self.suspect_since = -math.inf
        #: Connections opened in an older generation are replaced, never reused.
        self.generation = 0
        self._leased: dict[object, ConnectionRecord] = {}
        #: SQLite ``:memory:``: one connection never leased keeps the database alive.
        self._keeper: ConnectionRecord | None = None
        self._maintenance: asyncio.Task[None] | None = None
        #: Checks still running after their caller's deadline (see _validate).
        self._late: dict[asyncio.Task[None], ConnectionRecord] = {}
        self._scrub = scrub
        #: Spaces the stock's own connects (and asks the pool's breaker).
        self.backoff = backoff if backoff is not None else ConnectBackoff()
        #: Opens one connection of the engine; set for a ``credentials_provider``.
        self.opener: Callable[[AsyncEngine], Awaitable[AsyncConnection]] | None = None
        #: The alive-bypass window in seconds (0: every checkout checks; see the module docs).
        self.bypass = HOT_WINDOW
        #: Hot leased connections whose BEGIN waits for their first statement, by DBAPI connection.
        self._armed: dict[object, ConnectionRecord] = {}
        #: Leases that continued on a new connection after a lazy BEGIN found theirs dead.
        self.revived = 0

    # --- opening and closing ---------------------------------------------------

    async def connect(self, timeout: float) -> ConnectionRecord:
        """Open one connection within ``timeout`` seconds (see :func:`open_connection`)."""
        engine = self.engine
        assert engine is not None, "connect() before the engine exists"
        conn = await open_connection(engine, self.opener, timeout)
        try:
            return ConnectionRecord(conn, self.config.max_lifetime, self.generation)
        except BaseException:
            drop_connection(conn)
            raise

    def watch_statements(self) -> None:
        """Hook :meth:`lazy_begin` into the engine: call once the engine is set."""
        engine = self.engine
        assert engine is not None, "watch_statements() before the engine exists"
        event.listen(engine.sync_engine, "before_cursor_execute", self._before_statement)

    def terminate(self, held: ConnectionRecord) -> None:
        """Close ``held`` now, with no I/O and no ``await``."""
        self._armed.pop(held.dbapi, None)
        try:
            drop_connection(held.conn)
        except Exception as exc:
            logger.debug("pool '%s': terminating a connection: %s", self.name, self._scrub(exc))
        abort = getattr(held.driver, "terminate", None)
        if abort is not None and not held.dead():
            abort()  # SQLAlchemy could not; make sure the socket is gone

    async def close_gracefully(self, held: ConnectionRecord) -> None:
        """Say goodbye to the server; terminate if that fails, stalls or is cancelled."""
        try:
            async with asyncio.timeout(self.config.connection_timeout):
                await held.conn.close()
        except BaseException as exc:
            self.terminate(held)
            if not isinstance(exc, Exception):
                raise

    async def open(self, count: int, *, keep_alive: bool, display: str) -> None:
        """Open the first connections: with ``keep_alive`` the keeper (never
        leased), then ``count`` idle ones concurrently, each within
        ``connection_timeout``. Raises ``TimeoutError`` or ``ConnectionError``
        naming ``display`` (the first failure); what was opened stays here for
        :meth:`close_all`. Cancelled, nothing opened is lost."""
        if keep_alive:
            self._keeper = await self._connect_for_setup(display)
        outcomes = await asyncio.gather(
            *(self._warm_one(display) for _ in range(count)), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _warm_one(self, display: str) -> None:
        # Kept the moment it exists, so a failed setup can close it.
        self.idle.append(await self._connect_for_setup(display))

    async def _connect_for_setup(self, display: str) -> ConnectionRecord:
        timeout = self.config.connection_timeout
        try:
            return await self.connect(timeout)
        except TimeoutError:
            raise TimeoutError(f"no connection to {display} within {timeout:g}s") from None
        except Exception as exc:
            raise ConnectionError(f"cannot connect to {display}: {self._scrub(exc)}") from exc

    async def close_all(self) -> None:
        """Cut off every leased connection (no I/O), close every idle one
        gracefully, then the keeper, then dispose of the engine. Each close is
        bounded by ``connection_timeout`` (then terminated); cancelled, every
        close in flight terminates its connection and the cancellation propagates."""
        late = list(self._late)
        for task in late:  # checks whose callers gave up: end them (they terminate)
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        for held in list(self._leased.values()):  # still out after the drain: cut off
            self.terminate(held)
        self._leased.clear()
        self._armed.clear()
        idle = list(self.idle)
        self.idle.clear()
        await asyncio.gather(*(self.close_gracefully(held) for held in idle))
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await self.close_gracefully(keeper)
        engine, self.engine = self.engine, None
        if engine is not None:
            await engine.dispose()

    async def shed(self, capacity: int) -> None:
        """Close idle connections, oldest first, while more than ``capacity`` are open."""
        surplus = len(self.idle) + len(self._leased) - capacity
        while surplus > 0 and self.idle:
            await self.close_gracefully(self.idle.popleft())
            surplus -= 1

    # --- leases -----------------------------------------------------------------------

    def lend(self, session: object, held: ConnectionRecord) -> None:
        """File ``held`` (from :meth:`checkout`) as leased to ``session`` (an
        ``AsyncSession``, or the driver connection of a driver lease)."""
        self._leased[session] = held

    def take_back(self, session: object) -> ConnectionRecord | None:
        """The record leased to ``session``, no longer filed as leased (``None``:
        cut off by :meth:`close_all`). Hand it to :meth:`check_in` afterwards."""
        return self._leased.pop(session, None)

    def leased_with(self, dbapi: object) -> ConnectionRecord | None:
        """The leased record whose DBAPI connection is ``dbapi``, if any."""
        for held in self._leased.values():
            if held.dbapi is dbapi:
                return held
        return None

    # --- checkout and check-in ----------------------------------------------------

    async def checkout(self, timeout: float, *, transactional: bool = True) -> ConnectionRecord:
        """A validated connection within ``timeout`` seconds.

        Takes the most recently used idle connection; drops it if expired or
        dead and tries the next; opens a new one when none is left. Raises
        ``TimeoutError`` when the time runs out and the driver's error when a
        new connection cannot be opened or validated. Cancelled, it leaves no
        connection open and none lost.
        """
        deadline = monotonic() + timeout
        idle = self.idle
        while idle:
            held = idle.pop()
            now = monotonic()
            if held.expires_at <= now:
                await self.close_gracefully(held)
            elif held.generation != self.generation:
                self.terminate(held)  # retired: not worth a round trip of the caller's time
            elif held.dead():
                self.suspect_since = now
                self.terminate(held)
            elif await self._validate(held, deadline, now, transactional):
                return held
            else:
                self.suspect_since = now
        held = await self.connect(max(deadline - monotonic(), 0.001))
        await self._validate(held, deadline, None, transactional)
        self.backoff.succeeded(background=False)  # the server is back: refills may run
        return held

    async def _validate(
        self, held: ConnectionRecord, deadline: float, now: float | None, transactional: bool = True
    ) -> bool:
        """Is ``held`` (idle since before ``now``; ``None``: just opened) usable?

        With asyncpg the check is the transaction's own ``BEGIN``, sent here
        instead of with the first statement: the round trip the lease makes
        anyway proves the connection alive, and a dead one is replaced before
        the caller sees it. Other drivers are pinged when idle longer than
        ``ping_after`` or suspected. A new connection that fails raises.
        """
        begin = held.begin if transactional else None
        if begin is None:
            # A driver lease (``transactional=False``) sends no BEGIN: a
            # connection used within the bypass window and not suspected
            # since is handed out with no I/O (HikariCP's aliveBypassWindowMs).
            window = self.ping_after if transactional else min(self.ping_after, self.bypass)
            if self._trusted(held, now, window):
                return True
            check: Callable[[], Awaitable[object]] = partial(held.conn.run_sync, ping_connection)
        elif held.swappable and self._trusted(held, now, self.bypass):
            # Hot (or just opened): the BEGIN goes with the first statement,
            # and a dead connection is replaced then (lazy_begin).
            self._armed[held.dbapi] = held
            return True
        else:
            check = begin
        attempt = asyncio.ensure_future(check())
        try:
            async with asyncio.timeout(max(deadline - monotonic(), 0.001)):
                await asyncio.shield(attempt)
        except BaseException as exc:
            if not attempt.done():
                # The caller ran out of time (or was cancelled) with the check in
                # flight: the caller's deadline, not the connection's fault. The
                # check finishes in the background; a healthy connection is kept.
                self._finish_late(held, attempt)
                raise
            self.terminate(held)
            if now is None or not isinstance(exc, Exception) or isinstance(exc, TimeoutError):
                raise
            logger.info("pool '%s': dropped a dead connection: %s", self.name, self._scrub(exc))
            return False
        return True

    def _trusted(self, held: ConnectionRecord, now: float | None, window: float) -> bool:
        """Just opened (``now`` None), or used within ``window`` s and not suspected since?"""
        return now is None or (
            now - held.idle_since < window and held.idle_since > self.suspect_since
        )

    def untouched(self, held: ConnectionRecord) -> bool:
        """Has nothing been sent on ``held`` since its hot checkout (its BEGIN still waits)?"""
        return held.dbapi in self._armed

    def _before_statement(
        self,
        conn: Connection,
        cursor: object,
        statement: str,
        parameters: object,
        context: object,
        executemany: bool,
    ) -> None:
        # SQLAlchemy's before_cursor_execute, inside its greenlet: the first
        # statement of a hot lease sends the BEGIN first (one dict test otherwise).
        armed = self._armed
        if armed:
            held = armed.pop(conn.connection.dbapi_connection, None)
            if held is not None and await_ is not None:
                await_(self.lazy_begin(held, cursor))

    async def lazy_begin(self, held: ConnectionRecord, cursor: object = None) -> None:
        """Send the ``BEGIN`` of a hot lease, before its first statement.

        If the ``BEGIN`` finds the connection dead (the server closed it
        moments ago and the loop has not read the goodbye yet), nothing of
        the lease reached the server: a new connection is opened (within
        ``connection_timeout``), put under the lease's SQLAlchemy objects
        (:meth:`ConnectionRecord.take_driver`), the dead one terminated, and
        the ``BEGIN`` sent again -- once; the caller never sees it. A ``BEGIN``
        that gets no answer within the statement timeout (a network that
        stopped answering: the one thing ``is_closed()`` cannot see) aborts
        the connection and raises the pool's timeout error, as the checkout's
        check would have. Any other failure, a failing connect or a second
        failure raises as the statement's error would. Cancelled, the new
        connection is closed (or never opened) and the lease discards its own.
        """
        begin = held.begin
        assert begin is not None  # only records with the BEGIN hook are armed
        try:
            await begin()
            return
        except Exception as exc:
            chain = error_chain(exc)
            if any(isinstance(link, TimeoutError) for link in chain):
                held.abort()
                if self._begin_timeout is None:
                    raise
                raise self._begin_timeout(exc) from None
            if not held.dead() and not any(driver_connection_gone(link) for link in chain):
                raise
            logger.info(
                "pool '%s': a hot connection was found dead by its first BEGIN; "
                "continuing on a new connection: %s",
                self.name,
                self._scrub(exc),
            )
        self.suspect_since = monotonic()
        try:
            donor = await self.connect(self.config.connection_timeout)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and self._begin_timeout is not None:
                raise self._begin_timeout(exc) from None
            raise DatabaseConnectionLostError(
                f"Database operation failed: the connection to the server broke before the "
                f"lease's first statement, and a new one could not be opened "
                f"({type(exc).__name__}) (pool '{self.name}'); nothing was sent, retry when "
                "the server answers",
                pool_name=self.name,
            ) from None
        try:
            held.take_driver(donor, cursor)
        finally:
            self.terminate(donor)  # holds the dead connection now
        self.revived += 1
        self._drop_dead_idle()  # its neighbours died with it, most likely
        await begin()

    def _drop_dead_idle(self) -> None:
        """Terminate the idle connections the driver has seen closed (no I/O)."""
        dead = [held for held in self.idle if held.dead()]
        for held in dead:
            self.idle.remove(held)
            self.terminate(held)

    def _finish_late(self, held: ConnectionRecord, attempt: asyncio.Future[object]) -> None:
        task = asyncio.ensure_future(self._late_check(held, attempt))
        self._late[task] = held
        task.add_done_callback(lambda done: self._late.pop(done, None))

    async def _late_check(self, held: ConnectionRecord, attempt: asyncio.Future[object]) -> None:
        """Wait (at most ``connection_timeout``) for a check its caller gave up on.

        Passed: the transaction it began is rolled back and the connection goes
        back to the idle stock (unless the pool is full or closing). Failed,
        timed out or cancelled (``close_all``): the connection is terminated.
        """
        try:
            async with asyncio.timeout(self.config.connection_timeout):
                await attempt
            ok = await held.conn.run_sync(lambda _sync: held.reset(rollback=True))
        except BaseException as exc:
            attempt.cancel()
            self.terminate(held)
            if not isinstance(exc, Exception):
                raise
            logger.debug("pool '%s': a late check failed: %s", self.name, self._scrub(exc))
            return
        # Every other connection is idle, late like this one, or held under an
        # admission slot (leased, being opened, checked or returned): keep this
        # one only if that leaves room, so the pool never holds more than max_size.
        others = len(self.idle) + self._gate.in_use + len(self._late) - 1
        full = others >= self.config.max_size
        if ok and self._is_ready() and not full:
            self.check_in(held, reusable=True)
        else:
            await self.close_gracefully(held)

    def check_in(self, held: ConnectionRecord, reusable: bool) -> None:
        """Take ``held`` back after a lease: keep it idle, or close it if it is
        not ``reusable``, was invalidated, or is left inside a transaction."""
        self._armed.pop(held.dbapi, None)
        conn = held.conn
        now = monotonic()
        if conn.invalidated:
            # One connection died under a lease; the idle ones may have too.
            self.suspect_since = now
        elif (
            reusable
            and not conn.in_transaction()
            and not held.dead()
            and held.generation == self.generation
        ):
            if held.stale:
                held.renew()
            held.idle_since = now
            self.idle.append(held)
            return
        self.terminate(held)

    # --- replacing every connection ----------------------------------------------------

    def retire_all(self) -> int:
        """Start a new generation: every open connection is to be replaced.

        No I/O and no ``await``, so it is safe from a SQLAlchemy event handler.
        From now on no connection opened before is handed out again: an idle
        one is dropped when a checkout finds it (or by :meth:`replace_retired`
        or maintenance), a leased one is closed when its lease ends. Returns
        how many connections were open (idle plus leased).
        """
        self.generation += 1
        return len(self.idle) + len(self._leased)

    def is_retired(self, held: ConnectionRecord) -> bool:
        """Was ``held`` opened before the last :meth:`retire_all`?"""
        return held.generation != self.generation

    async def replace_retired(self, interval: float) -> None:
        """Close the retired idle connections one at a time, spread over ``interval``
        seconds, reopening up to ``min_size`` after each. A checkout may take
        (and drop) one first; cancelled, the rest are still dropped by checkouts
        and maintenance."""
        retired = [held for held in self.idle if self.is_retired(held)]
        pause = drain_pause(interval, len(retired))
        for held in retired:
            try:
                self.idle.remove(held)
            except ValueError:
                continue  # a checkout found it first and dropped it
            await self.close_gracefully(held)
            await self.top_up()
            if pause:
                await asyncio.sleep(pause)
        await self.top_up()

    # --- maintenance ----------------------------------------------------------------

    def start_maintenance(self) -> None:
        """Start the maintenance task (see :meth:`_maintain`)."""
        self._maintenance = start_task(self._maintain(), name=f"resync-db-maintain-{self.name}")

    async def stop_maintenance(self) -> None:
        """Cancel the maintenance task and wait until it ended (the kernel's
        ``stop_task``); cancelling the caller propagates at once."""
        task, self._maintenance = self._maintenance, None
        await stop_task(task)

    async def _maintain(self) -> None:
        """Forever: close expired and surplus idle connections, reopen up to min_size.

        Wakes every :func:`~resync.core.pools.kernel.pacing.maintenance_tick` of
        ``idle_timeout`` and ``max_lifetime``; a failing round is logged and the
        next one runs. Ends by cancellation; cancelled while the pool is still
        ready (the loop shutting down under a pool nobody closed: ``close()``
        leaves ``ready`` first) it closes every connection before it ends.
        """
        tick = maintenance_tick(self.config.idle_timeout, self.config.max_lifetime)
        try:
            while True:
                await asyncio.sleep(tick)
                try:
                    await self.reap_idle()
                    await self.top_up()
                except Exception as exc:  # one bad round must not end maintenance
                    logger.warning("pool '%s': maintenance failed: %s", self.name, self._scrub(exc))
        except asyncio.CancelledError:
            if self._is_ready():
                logger.warning(
                    "pool '%s' was never closed; closing its connections as the loop shuts down",
                    self.name,
                )
                await self.close_all()
            raise

    async def reap_idle(self) -> None:
        """Close expired or dead idle connections, and those idle longer than
        ``idle_timeout`` while more than ``min_size`` are open (longest idle first)."""
        idle = self.idle
        if not idle:
            return
        now = monotonic()
        idle_timeout = self.config.idle_timeout
        surplus = len(idle) + len(self._leased) - self.config.min_size
        victims: list[ConnectionRecord] = []
        keep: list[ConnectionRecord] = []
        for held in idle:  # oldest first
            worn_out = held.expires_at <= now or held.dead() or held.generation != self.generation
            if worn_out or (surplus > 0 and 0 < idle_timeout <= now - held.idle_since):
                victims.append(held)
                surplus -= 1
            else:
                keep.append(held)
        if victims:
            idle.clear()
            idle.extend(keep)
            logger.debug("pool '%s': closing %d idle connection(s)", self.name, len(victims))
            for held in victims:
                await self.close_gracefully(held)

    async def top_up(self) -> None:
        """Reopen connections up to ``min_size``, each under an admission slot
        (none free: the pool is busy) and only when :attr:`backoff` allows (not
        while the breaker is open, not before the pause after a failure). A
        failure is logged, spaces the next attempt and ends the round."""
        gate = self._gate
        wanted = min(self.config.min_size, gate.capacity)
        while self._is_ready() and len(self.idle) + len(self._leased) < wanted:
            # The slot keeps max_size an exact bound on open connections; when
            # none is free the pool is busy and has its connections anyway.
            if not gate.try_acquire():
                return
            try:
                if not self.backoff.may_connect():
                    return
                try:
                    held = await self.connect(self.config.connection_timeout)
                except Exception as exc:
                    pause = self.backoff.failed(exc)
                    logger.warning(
                        "pool '%s': cannot reopen connections up to min_size: %s %s "
                        "(next attempt in %.1fs)",
                        self.name,
                        type(exc).__name__,  # a connect timeout has no message of its own
                        self._scrub(exc),
                        pause,
                    )
                    return
                self.backoff.succeeded()
                self.idle.append(held)
            finally:
                gate.release()
