"""Redis pool: ``async with pool.get_connection() as client`` over redis.asyncio.

A lease yields a ``redis.asyncio.Redis`` bound to one connection of the pool
(see :mod:`resync.core.pools.redis.connections`), not a client over a shared pool:

- admission equals connections: ``max_size`` leases are ``max_size`` sockets,
  and a command, pipeline or pub/sub in a lease never waits inside redis-py;
- the pool sees how each lease ended, so a connection whose state is unknown
  (the lease was cancelled or timed out with a command in flight, a pipeline
  or pub/sub was left open) has its socket closed instead of being handed on:
  no reply can reach the next user of the connection (CVE-2023-28858 class);
- a command on the leased client skips redis-py's per-command pool checkout,
  so a lease with one command costs less than one command through a bare
  redis-py pool (``benchmarks/workloads_redis_http.py``, ``make bench``).

The driver is a ``redis.asyncio.BlockingConnectionPool`` capped at ``max_size``
with ``timeout=connection_timeout``. It parses the URL (``redis://``,
``rediss://``, ``unix://``, password and ACL user) and makes the connection
objects; resync keeps them (at most ``max_size``, one per slot) instead of
checking them in and out per command, so callers wait in resync's FIFO
admission and never in redis-py, and a discarded connection object can be
dropped for good (a command that outlived its lease cannot reopen a socket
that the pool hands to the next caller). Should redis-py itself report "no
connection available", it comes out as the pool's timeout error.

redis-py neither closes idle connections nor replaces old ones; a maintenance
task does: idle connections above ``min_size`` are closed after
``idle_timeout``; connections older than ``max_lifetime`` (jittered by -5%) are
closed when next returned or found idle, and the pool is topped back up to
``min_size``. ``0`` disables either rule. ``drain()`` and ``resize()`` work on
the same slots (:mod:`~resync.core.pools.redis.live`). Sentinel and Cluster
URLs have their own pools; :func:`~resync.core.pools.redis.url.create_redis_pool`
picks the class from the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any, ClassVar
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio import ConnectionPool as DriverPool
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from resync.core.exceptions import REDIS_ERRORS, PoolConfigError, ResyncError
from resync.core.pools.kernel.pool import ConnectionPool, ConnectionPoolConfig
from resync.core.pools.redis.connections import (
    LeasedRedis,
    Slot,
    is_driver_exhausted,
    leaves_state_unknown,
    peer_closed,
)
from resync.core.pools.redis.live import drain_slots, resize_slots
from resync.core.redact import mask_url, url_secrets
from resync.core.resilience import BreakerSpec, build_circuit_breaker

__all__ = ["RedisConnectionPool"]

logger = logging.getLogger("resync.pool.redis")

_SCHEMES = frozenset({"redis", "rediss", "unix"})
# Options resync derives from ConnectionPoolConfig; passing them would fight it.
_RESERVED = frozenset({"max_connections", "timeout", "connection_pool", "connection_class"})


class RedisConnectionPool(ConnectionPool[Redis]):
    """A pool of Redis connections leased one per caller.

    ``redis_url`` is any URL redis-py accepts; ``client_options`` go to the
    driver (``decode_responses``, ``ssl_ca_certs``, ``socket_timeout``...).
    Defaults: ``decode_responses=True``, connect and socket timeouts equal to
    ``connection_timeout``, TCP keepalive, and two jittered retries of a
    command that failed on a dead socket (a restarted server costs callers
    nothing once it is back). ``circuit_breaker`` is off unless given.
    Raises ``PoolConfigError`` (a ``ValueError``) for an empty or non-Redis URL.
    """

    backend = "redis"
    errors = REDIS_ERRORS
    #: URL schemes this class accepts (a Sentinel subclass takes its own).
    url_schemes: ClassVar[frozenset[str]] = _SCHEMES

    def __init__(
        self,
        config: ConnectionPoolConfig,
        redis_url: str,
        *,
        circuit_breaker: BreakerSpec = None,
        **client_options: Any,
    ) -> None:
        if not isinstance(redis_url, str) or not redis_url.strip():
            raise PoolConfigError("redis_url cannot be empty: pass redis://host:port/db")
        try:
            parts = urlsplit(redis_url.strip())
            if parts.scheme in _SCHEMES:  # Sentinel URLs list hosts: redis_url parses them
                _ = parts.port  # a port that is not a number raises here, not at connect
        except ValueError:
            # from None: a parser's message may quote part of the URL.
            raise PoolConfigError(
                f"redis_url {mask_url(redis_url)!r} is not a valid URL (check the brackets "
                "of an IPv6 host and the port); write it as redis://[[user]:password@]host:port/db"
            ) from None
        scheme = parts.scheme
        if scheme not in self.url_schemes:
            hint = ""
            if scheme in ("redis+sentinel", "redis+cluster"):
                hint = "; build pools for Sentinel and Cluster URLs with create_redis_pool()"
            raise PoolConfigError(
                f"redis_url of {type(self).__name__} must start with "
                f"{', '.join(sorted(s + '://' for s in self.url_schemes))}, got "
                f"{mask_url(redis_url)!r}{hint}"
            )
        reserved = _RESERVED.intersection(client_options)
        if reserved:
            raise PoolConfigError(
                f"{', '.join(sorted(reserved))} cannot be passed to RedisConnectionPool: "
                "sizes and timeouts come from ConnectionPoolConfig"
            )
        super().__init__(config)
        self.redis_url = redis_url.strip()
        self.client_options = client_options
        self.circuit_breaker = build_circuit_breaker(config.pool_name, circuit_breaker)
        self._connection_pool: DriverPool | None = None
        self._idle: list[Slot] = []  # open, not leased; the end is the most recently used
        self._closed: list[Slot] = []  # socket closed; reopened before the next use
        self._slots: list[Slot] = []  # every slot, leased or not (at most max_size)
        self._maintenance: asyncio.Task[None] | None = None
        self._label = f"pool '{self.name}'"
        self._secret_values = url_secrets(redis_url) + [
            str(client_options[key])
            for key in ("password", "ssl_password")
            if client_options.get(key)
        ]

    # --- lifecycle ----------------------------------------------------------------

    async def _setup_pool(self) -> None:
        cfg = self.config
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": cfg.connection_timeout,
            "socket_timeout": cfg.connection_timeout,
            "socket_keepalive": True,
            "retry": Retry(
                ExponentialWithJitterBackoff(base=0.02, cap=0.5),
                retries=2,
                supported_errors=(RedisConnectionError,),
            ),
        }
        options.update(self.client_options)
        self._connection_pool = self._build_driver(options)
        # Even with min_size=0 one connection is opened: a bad URL, password or
        # TLS setting must fail initialize(), not the first request.
        for _ in range(max(cfg.min_size, 1)):
            slot = await self._open_slot(cfg.connection_timeout)
            try:
                await self._ping_slot(slot)
            finally:
                self._idle.append(slot)
        self._maintenance = asyncio.create_task(
            self._maintain(), name=f"resync-redis-maintenance-{self.name}"
        )

    def _build_driver(self, options: dict[str, Any]) -> DriverPool:
        """The redis-py pool that parses the URL and makes connection objects."""
        return BlockingConnectionPool.from_url(
            self.redis_url,
            max_connections=self.config.max_size,
            timeout=self.config.connection_timeout,
            **options,
        )

    async def _close_pool(self) -> None:
        task, self._maintenance = self._maintenance, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        driver, self._connection_pool = self._connection_pool, None
        self._idle, self._closed = [], []
        slots, self._slots = self._slots, []
        # Leased slots too: close() waited for them up to its drain timeout.
        # A lease still running gets errors, and cannot reopen the socket.
        for slot in slots:
            if slot.opened:
                self.stats.connection_closures += 1
            slot.opened = False
            slot.adapter.active = False
            slot.conn.retry.update_retries(0)
            await self._disconnect(slot.conn)
        if driver is not None:
            await driver.aclose()

    # --- leasing -------------------------------------------------------------------

    async def _acquire_connection(self, timeout: float) -> Redis:
        slot = None
        while self._idle and slot is None:
            slot = self._idle.pop()
            if peer_closed(slot.conn):  # lost while idle: reopen it, unseen by the caller
                await self._close_slot(slot)
                slot = None
        if slot is None:
            if self._closed:
                slot = self._closed.pop()
                await self._connect(slot, timeout)
            else:
                slot = await self._open_slot(timeout)
        slot.adapter.active = True
        return slot.client

    async def _release_connection(self, connection: Redis, error: BaseException | None) -> None:
        slot = connection._resync_slot if isinstance(connection, LeasedRedis) else None
        if slot is None:  # pragma: no cover - only LeasedRedis objects are handed out
            return
        adapter = slot.adapter
        adapter.active = False
        conn = slot.conn
        now = time.monotonic()
        if error is not None and self._is_backend_failure(error):
            self.stats.connection_errors += 1
        if (
            (error is not None and leaves_state_unknown(error))
            or adapter.busy  # a command, pipeline or pub/sub still holds it
            or not conn.is_connected
            or conn.should_reconnect()  # type: ignore[no-untyped-call]
            or now >= slot.expires_at
            or self._shutdown
        ):
            await self._close_slot(slot)
            return
        slot.last_used = now
        self._idle.append(slot)

    async def _ping(self, connection: Redis) -> None:
        if await connection.ping() is not True:
            raise RedisConnectionError("PING did not answer PONG")

    # --- slots -----------------------------------------------------------------------

    async def _open_slot(self, timeout: float) -> Slot:
        """Add a slot (callers hold an admission slot, so there are <= max_size) and connect it."""
        driver = self._connection_pool
        if driver is None:
            raise self._closed_error()
        conn = driver.make_connection()  # type: ignore[no-untyped-call]
        slot = Slot(driver, conn, self._label, self._make_client)
        self._slots.append(slot)
        slot.adapter.set_turn_timeout(self.config.connection_timeout)
        await self._connect(slot, timeout)
        return slot

    def _make_client(self, adapter: Any) -> LeasedRedis:
        return LeasedRedis(connection_pool=adapter)

    async def _connect(self, slot: Slot, timeout: float) -> None:
        """Open the slot's socket within ``timeout``; on any failure it stays closed."""
        try:
            async with asyncio.timeout(timeout):
                await slot.conn.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            # Interrupted mid-handshake a redis-py connection still looks
            # connected (AUTH/SELECT maybe not sent): close it for certain.
            await self._disconnect(slot.conn)
            self._closed.append(slot)
            raise
        self.stats.connection_creations += 1
        slot.opened = True
        lifetime = self.config.max_lifetime
        slot.expires_at = (
            time.monotonic() + lifetime * random.uniform(0.95, 1.0) if lifetime else float("inf")
        )
        slot.last_used = time.monotonic()

    async def _ping_slot(self, slot: Slot) -> None:
        slot.adapter.active = True
        try:
            async with asyncio.timeout(self.config.connection_timeout):
                await self._ping(slot.client)
        finally:
            slot.adapter.active = False

    async def _close_slot(self, slot: Slot) -> None:
        """Close the slot's connection for good (with any reply in flight); keep the slot."""
        if slot.opened:
            self.stats.connection_closures += 1
        driver = self._connection_pool
        if driver is None:  # the pool is closed: nothing will reopen it
            await self._disconnect(slot.conn)
            return
        old = slot.replace_connection(driver.make_connection())  # type: ignore[no-untyped-call]
        self._closed.append(slot)
        # A command that outlived its lease may still hold the old object:
        # without retries it cannot reconnect it, it just fails.
        old.retry.update_retries(0)
        await self._disconnect(old)

    async def _disconnect(self, conn: AbstractConnection) -> None:
        try:
            # nowait: close the socket without waiting for the peer; nothing
            # here suspends, so a second cancellation cannot leave it half-open.
            await conn.disconnect(nowait=True)
        except Exception as exc:
            logger.debug("pool '%s': error closing a connection: %s", self.name, self._scrub(exc))

    # --- maintenance -------------------------------------------------------------------

    def _maintenance_interval(self) -> float:
        limits = [x for x in (self.config.idle_timeout, self.config.max_lifetime) if x > 0]
        return min(max(min(limits) / 4, 0.05), 30.0) if limits else 30.0

    async def _maintain(self) -> None:
        interval = self._maintenance_interval()
        while True:
            await asyncio.sleep(interval)
            try:
                await self._retire_idle(time.monotonic())
                await self._top_up()
            except Exception as exc:
                logger.debug("pool '%s': maintenance: %s", self.name, self._scrub(exc))

    async def _retire_idle(self, now: float) -> None:
        """Close expired or lost idle connections, then idle ones above ``min_size``."""
        idle_timeout = self.config.idle_timeout
        expired = [s for s in self._idle if now >= s.expires_at or peer_closed(s.conn)]
        surplus: list[Slot] = []
        if idle_timeout:
            open_now = self._open_connections() - len(expired)
            for slot in self._idle:  # least recently used first
                if open_now <= self.config.min_size:
                    break
                if slot not in expired and now - slot.last_used >= idle_timeout:
                    surplus.append(slot)
                    open_now -= 1
        doomed = expired + surplus
        if not doomed:
            return
        # Take them out of the idle list before any await: no lease can get them.
        self._idle = [slot for slot in self._idle if slot not in doomed]
        for slot in doomed:
            await self._close_slot(slot)
        logger.debug(
            "pool '%s': closed %d expired and %d idle connections",
            self.name,
            len(expired),
            len(surplus),
        )

    async def _top_up(self) -> None:
        """Reopen connections up to ``min_size`` (each under an admission slot)."""
        gate = self._gate
        while self._open_connections() < self.config.min_size and not self._shutdown:
            # Holding an admission slot while connecting keeps leases plus
            # connections being opened within max_size.
            if not gate.try_acquire():
                return
            try:
                if self._closed:
                    slot = self._closed.pop()
                    await self._connect(slot, self.config.connection_timeout)
                else:
                    slot = await self._open_slot(self.config.connection_timeout)
                self._idle.append(slot)
            finally:
                gate.release()

    def _open_connections(self) -> int:
        return len(self._slots) - len(self._closed)

    def _idle_connections(self) -> int:
        return len(self._idle)

    # --- live operations (resync.core.pools.redis.live) ---------------------------------

    async def _replace_connections(self, interval: float | None) -> int:
        return await drain_slots(self, interval)

    async def _apply_resize(self) -> None:
        await resize_slots(self)

    # --- errors --------------------------------------------------------------------------

    def _map_error(self, error: BaseException) -> BaseException:
        if isinstance(error, ResyncError) or not isinstance(error, RedisError):
            return error
        if is_driver_exhausted(error):
            return self._timeout_error(0.0, cause=error)
        return self.errors.base(
            f"Redis operation failed on pool '{self.name}': {type(error).__name__}: "
            f"{self._scrub(error)}",
            pool_name=self.name,
        )

    def _is_backend_failure(self, error: BaseException) -> bool:
        if isinstance(error, ResponseError) or is_driver_exhausted(error):
            return False
        return isinstance(error, RedisConnectionError | RedisTimeoutError | OSError | TimeoutError)

    def _secrets(self) -> list[str]:
        return self._secret_values

    # --- seed API ----------------------------------------------------------------------------

    async def get_pool_info(self) -> dict[str, Any]:
        """Server-side counters (``INFO stats``) and pool sizes; ``{}`` if Redis fails.

        Takes a lease, so it waits at most ``connection_timeout``. Never raises
        for a Redis error (cancellation propagates).
        """
        try:
            async with self.get_connection() as client:
                info = await client.info("stats")
        except (ResyncError, RedisError, OSError, TimeoutError) as exc:
            logger.warning("pool '%s': INFO failed: %s", self.name, self._scrub(exc))
            return {}
        return {
            "pool_name": self.name,
            "url": mask_url(self.redis_url),
            "pool_max_connections": self.config.max_size,
            "open_connections": self._open_connections(),
            "idle_connections": len(self._idle),
            "total_connections_made": info.get("total_connections_received", 0),
            "total_commands_processed": info.get("total_commands_processed", 0),
        }
