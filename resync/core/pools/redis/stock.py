"""The connections of one Redis pool and every rule that opens, reuses and closes them.

:class:`ConnectionStock` owns the pool's
:class:`~resync.core.pools.redis.connections.ConnectionRecord` objects (at most
``max_size``), which are idle and which closed, and their maintenance; the pool
keeps the lease hooks and delegates the rest. The rules:

- **Reuse**: idle connections are LIFO, so under light load the same few stay
  warm; one the server closed while idle is reopened before a lease sees it.
- **Return**: a connection whose state is unknown (a command may be in
  flight, a pipeline or pub/sub still holds it), that redis-py dropped, or
  that expired (:func:`~resync.core.pools.kernel.pacing.expiry`) is closed.
- **Idle timeout**: :meth:`ConnectionStock.maintain` closes connections idle
  longer than ``idle_timeout`` above ``min_size`` and reopens up to it.
- **Marking**: drain, resize and failover never touch a leased connection: it
  is *marked* (its lifetime set to the past) and closed when returned.
- **Bounds**: an idle record leaves the idle list before any ``await``, and
  reopening takes an admission slot of the pool's gate, so leases plus
  connections being opened stay within ``max_size`` (no free slot: marked).
- **Reconnecting**: the stock's own connects (the refill up to ``min_size``,
  a drain's reopen) ask the pool's
  :class:`~resync.core.pools.kernel.pacing.ConnectBackoff` first: none while
  the pool's circuit breaker is open (in half-open a refill may be the
  probe), and after a failed one the next waits 0.5 s, doubling up to 30 s.
  A lease's connect is the lease's own (the breaker refuses leases while the
  server is down).

Every close is counted in ``connection_closures`` and every open in
``connection_creations``, here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import ConnectionPool as DriverPool
from redis.asyncio import Redis

from resync.core.pools.kernel.admission import AdmissionGate
from resync.core.pools.kernel.config import ConnectionPoolConfig
from resync.core.pools.kernel.pacing import ConnectBackoff, drain_pause, maintenance_tick
from resync.core.pools.kernel.stats import ConnectionPoolStats
from resync.core.pools.redis.connections import (
    ConnectionRecord,
    LeasedRedis,
    disconnect,
    peer_closed,
)

__all__ = ["ConnectionStock"]

logger = logging.getLogger("resync.pool.redis")


class ConnectionStock:
    """The records of one Redis pool: every one, the idle ones, the closed ones.

    ``gate`` is the pool's admission gate (top-ups and drains take a slot of
    it); ``is_closing`` says whether the pool's ``close()`` has begun;
    ``closed_error`` builds the error for a connection asked of a closed pool;
    ``ping`` is one round trip on a client; ``scrub`` masks secrets in log
    lines. No method leaves a connection open and unaccounted for, whatever
    interrupts it.
    """

    def __init__(
        self,
        name: str,
        config: ConnectionPoolConfig,
        stats: ConnectionPoolStats,
        gate: AdmissionGate,
        *,
        is_closing: Callable[[], bool],
        closed_error: Callable[[], BaseException],
        ping: Callable[[Redis], Awaitable[None]],
        scrub: Callable[[object], str],
        backoff: ConnectBackoff | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.stats = stats
        #: The redis-py pool that parses the URL and makes connection objects
        #: (``None`` before :meth:`open` and after :meth:`close_all`).
        self.driver: DriverPool | None = None
        self.label = f"pool '{name}'"
        self._gate = gate
        self._is_closing = is_closing
        self._closed_error = closed_error
        self._ping = ping
        self._scrub = scrub
        #: Spaces the stock's own connects (and asks the pool's breaker).
        self.backoff = backoff if backoff is not None else ConnectBackoff()
        self._idle: list[ConnectionRecord] = []  # open, not leased; the end is the most recent
        self._closed: list[ConnectionRecord] = []  # socket closed; reopened before the next use
        self._records: list[ConnectionRecord] = []  # every record, leased or not
        self._by_client: dict[int, ConnectionRecord] = {}  # id(record.client) -> record

    # --- counts -----------------------------------------------------------------

    @property
    def open_count(self) -> int:
        """Connections open now, leased or idle."""
        return len(self._records) - len(self._closed)

    @property
    def idle_count(self) -> int:
        """Open connections no lease holds."""
        return len(self._idle)

    # --- opening and closing the stock ----------------------------------------------

    async def open(self, driver: DriverPool, count: int) -> None:
        """Use ``driver`` and open ``count`` connections, pinging each.

        Each connect and ping is bounded by ``connection_timeout``; the first
        failure raises (the connections opened so far stay in the stock, for
        :meth:`close_all`).
        """
        self.driver = driver
        for _ in range(count):
            record = await self._add(self.config.connection_timeout)
            try:
                await record.ping(self._ping, self.config.connection_timeout)
            finally:
                self._idle.append(record)

    async def close_all(self) -> None:
        """Close every connection, leased ones too, then the driver.

        ``close()`` waited for the leases up to its drain timeout; a lease still
        running gets errors, and cannot reopen its socket (its connection has
        no retries left). Nothing here waits for the server.
        """
        driver, self.driver = self.driver, None
        self._idle, self._closed = [], []
        records, self._records = self._records, []
        self._by_client.clear()
        for record in records:
            if record.opened:
                self.stats.connection_closures += 1
            record.opened = False
            record.adapter.active = False
            record.conn.retry.update_retries(0)
            await disconnect(record.conn, self.label, self._scrub)
        if driver is not None:
            await driver.aclose()

    # --- leases -------------------------------------------------------------------

    async def checkout(self, timeout: float) -> LeasedRedis:
        """A client bound to an open connection, for a lease (the caller holds an
        admission slot).

        Takes the most recently used idle connection (one the server closed is
        reopened instead, unseen by the caller), else reopens a closed record,
        else adds one. Opening is bounded by ``timeout`` (``TimeoutError``);
        a failed or cancelled open leaves the record closed. Raises
        ``closed_error()`` once the stock is closed.
        """
        record = None
        while self._idle and record is None:
            record = self._idle.pop()
            if peer_closed(record.conn):
                await self._close(record)
                record = None
        if record is None:
            if self._closed:
                record = self._closed.pop()
                await self._connect(record, timeout)
            else:
                record = await self._add(timeout)
            self.backoff.succeeded(background=False)  # the server is back: refills may run
        record.adapter.active = True
        return record.client

    def record_of(self, client: object) -> ConnectionRecord | None:
        """The record whose leased client is ``client`` (``None``: not one of
        this stock's, or the stock was closed since)."""
        return self._by_client.get(id(client))

    async def check_in(self, record: ConnectionRecord, *, clean: bool) -> None:
        """Take ``record`` back after a lease; ``clean`` is False when the lease
        ended by an error that may have interrupted a command.

        The connection is kept idle only if it is clean, no command, pipeline
        or pub/sub still uses it, redis-py still has it connected and does not
        want it reconnected, it has not expired and the pool is not closing;
        otherwise it is closed at once (with any reply in flight).
        """
        adapter = record.adapter
        adapter.active = False
        conn = record.conn
        now = time.monotonic()
        if (
            not clean
            or adapter.busy
            or not conn.is_connected
            or conn.should_reconnect()  # type: ignore[no-untyped-call]
            or now >= record.expires_at
            or self._is_closing()
        ):
            await self._close(record)
            return
        record.last_used = now
        self._idle.append(record)

    # --- one record --------------------------------------------------------------------

    async def _add(self, timeout: float) -> ConnectionRecord:
        """Add a record (the caller holds an admission slot, so there are at most
        ``max_size``) and connect it within ``timeout``."""
        driver = self.driver
        if driver is None:
            raise self._closed_error()
        conn = driver.make_connection()  # type: ignore[no-untyped-call]
        record = ConnectionRecord(driver, conn, self.label)
        self._records.append(record)
        self._by_client[id(record.client)] = record
        record.adapter.set_turn_timeout(self.config.connection_timeout)
        await self._connect(record, timeout)
        return record

    def _forget(self, record: ConnectionRecord) -> None:
        self._records.remove(record)
        self._by_client.pop(id(record.client), None)

    async def _connect(self, record: ConnectionRecord, timeout: float) -> None:
        """Open the record's socket within ``timeout``; on any failure (cancellation
        included) the record is filed as closed and the error raised."""
        try:
            await record.connect(timeout, self.config.max_lifetime, self._scrub)
        except BaseException:
            self._closed.append(record)
            raise
        self.stats.connection_creations += 1

    async def _close(self, record: ConnectionRecord) -> None:
        """Close the record's connection for good (with any reply in flight); keep
        the record, filed as closed, with a fresh connection object."""
        if record.opened:
            self.stats.connection_closures += 1
        driver = self.driver
        if driver is None:  # the stock is closed: nothing will reopen it
            await disconnect(record.conn, self.label, self._scrub)
            return
        old = record.replace_connection(driver.make_connection())  # type: ignore[no-untyped-call]
        self._closed.append(record)
        # A command that outlived its lease may still hold the old object:
        # without retries it cannot reconnect it, it just fails.
        old.retry.update_retries(0)
        await disconnect(old, self.label, self._scrub)

    # --- maintenance ------------------------------------------------------------------

    async def maintain(self) -> None:
        """Forever: close expired, lost and surplus idle connections, reopen up to
        ``min_size``.

        Wakes every :func:`~resync.core.pools.kernel.pacing.maintenance_tick` of
        ``idle_timeout`` and ``max_lifetime``; a failing round is logged at
        DEBUG and the next one runs. Ends only by cancellation (the pool's
        ``stop_task``).
        """
        tick = maintenance_tick(self.config.idle_timeout, self.config.max_lifetime)
        while True:
            await asyncio.sleep(tick)
            try:
                await self.retire_idle(time.monotonic())
                await self.top_up()
            except Exception as exc:
                logger.debug("pool '%s': maintenance: %s", self.name, self._scrub(exc))

    async def retire_idle(self, now: float) -> None:
        """Close expired or lost idle connections, then those idle longer than
        ``idle_timeout`` while more than ``min_size`` are open (least recently
        used first)."""
        idle_timeout = self.config.idle_timeout
        expired = [r for r in self._idle if now >= r.expires_at or peer_closed(r.conn)]
        surplus: list[ConnectionRecord] = []
        if idle_timeout:
            open_now = self.open_count - len(expired)
            for record in self._idle:  # least recently used first
                if open_now <= self.config.min_size:
                    break
                if record not in expired and now - record.last_used >= idle_timeout:
                    surplus.append(record)
                    open_now -= 1
        doomed = expired + surplus
        if not doomed:
            return
        # Take them out of the idle list before any await: no lease can get them.
        self._idle = [record for record in self._idle if record not in doomed]
        for record in doomed:
            await self._close(record)
        logger.debug(
            "pool '%s': closed %d expired and %d idle connections",
            self.name,
            len(expired),
            len(surplus),
        )

    async def top_up(self) -> None:
        """Reopen connections up to ``min_size``, each under an admission slot
        (none free: the pool is busy and has its connections anyway) and only
        when :attr:`backoff` allows (not while the breaker is open, not before
        the pause after a failure). A failed open spaces the next and raises;
        the record stays closed."""
        gate = self._gate
        while self.open_count < self.config.min_size and not self._is_closing():
            # Holding an admission slot while connecting keeps leases plus
            # connections being opened within max_size.
            if not gate.try_acquire():
                return
            try:
                if not self.backoff.may_connect():
                    return
                try:
                    if self._closed:
                        record = self._closed.pop()
                        await self._connect(record, self.config.connection_timeout)
                    else:
                        record = await self._add(self.config.connection_timeout)
                except Exception as exc:
                    self.backoff.failed(exc)
                    raise
                self.backoff.succeeded()
                self._idle.append(record)
            finally:
                gate.release()

    # --- drain, failover, resize -------------------------------------------------------

    async def drain(self, interval: float | None) -> int:
        """Replace every open connection; return how many were open.

        Leased connections are marked at once and replaced when returned; idle
        ones are closed and reopened one at a time, ``interval / count`` seconds
        apart (:func:`~resync.core.pools.kernel.pacing.drain_pause`). A
        connection that changed hands in the meantime is handled where it is
        then (replaced already: skipped; leased: marked). Cancelled, the pacing
        stops; marked connections are still replaced on return.
        """
        snapshot = [(record, record.conn) for record in self._records if record.opened]
        idle = set(map(id, self._idle))
        for record, _conn in snapshot:
            if id(record) not in idle:
                record.mark()
        pause = drain_pause(interval, len(snapshot))
        for record, conn in snapshot:
            if self._is_closing():
                break
            if id(record) not in idle or record.conn is not conn:
                continue  # leased at the start (marked above) or already replaced
            await self._replace_idle(record)
            if pause:
                await asyncio.sleep(pause)
        if not self._is_closing():
            await self.top_up()
        return len(snapshot)

    async def _replace_idle(self, record: ConnectionRecord) -> None:
        """Close ``record`` and reopen it, if it is still idle and the pool has room
        (otherwise it is marked). A failed reopen is logged; the next lease
        reopens it."""
        if record not in self._idle:
            record.mark()  # leased since the snapshot: closed on return
            return
        gate = self._gate
        if not gate.try_acquire():
            record.mark()
            return
        try:
            self._idle.remove(record)
            await self._close(record)  # now closed: a lease may reopen it first
            if (
                record in self._closed
                and not self._is_closing()
                and self.backoff.may_connect()  # else left closed: a lease reopens it
            ):
                self._closed.remove(record)
                try:
                    await self._connect(record, self.config.connection_timeout)
                except Exception as exc:  # left closed: the next lease reopens it
                    pause = self.backoff.failed(exc)
                    logger.info(
                        "pool '%s': reopening during drain: %s (next reopen in %.1fs)",
                        self.name,
                        self._scrub(exc),
                        pause,
                    )
                else:
                    self.backoff.succeeded()
                    self._idle.append(record)
        finally:
            gate.release()

    async def retire(self, stale: Callable[[ConnectionRecord], bool]) -> int:
        """Close every ``stale`` idle connection now and mark the stale leased ones.

        For a failover: unlike :meth:`drain` nothing is paced, because
        connections to a demoted master must stop taking writes at once. Then
        tops up to ``min_size``. Returns how many connections were retired.
        """
        doomed = [record for record in self._records if record.opened and stale(record)]
        idle = [record for record in doomed if record in self._idle]
        self._idle = [record for record in self._idle if record not in idle]
        for record in doomed:
            if record not in idle:
                record.mark()
        for record in idle:
            await self._close(record)
        if not self._is_closing():
            await self.top_up()
        return len(doomed)

    async def resize(self, config: ConnectionPoolConfig) -> None:
        """Follow the pool's new sizes.

        Shrinking closes idle connections above the new ``max_size`` (least
        recently used first) and marks enough leased ones to get there as their
        leases end; growing opens up to the new ``min_size`` when there is room.
        """
        self.config = config
        driver = self.driver
        if driver is not None:
            driver.max_connections = config.max_size
        surplus = self.open_count - config.max_size
        while surplus > 0 and self._idle:
            await self._close(self._idle.pop(0))
            surplus -= 1
        if surplus > 0:
            idle = self._idle
            leased = [r for r in self._records if r.opened and r not in idle]
            for record in leased[:surplus]:
                record.mark()
        # Closed records above the cap are just objects: forget them.
        while len(self._records) > config.max_size and self._closed:
            self._forget(self._closed.pop(0))
        if not self._is_closing():
            await self.top_up()
