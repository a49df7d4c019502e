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
objects; resync keeps them (at most ``max_size``, one record each) instead of
checking them in and out per command, so callers wait in resync's FIFO
admission and never in redis-py, and a discarded connection object can be
dropped for good (a command that outlived its lease cannot reopen a socket
that the pool hands to the next caller). Should redis-py itself report "no
connection available", it comes out as the pool's timeout error.

redis-py neither closes idle connections nor replaces old ones; a maintenance
task does: idle connections above ``min_size`` are closed after
``idle_timeout``; connections older than ``max_lifetime`` (jittered by -5%) are
closed when next returned or found idle, and the pool is topped back up to
``min_size``. ``0`` disables either rule. The connections, that maintenance,
``drain()`` and ``resize()`` belong to the pool's
:class:`~resync.core.pools.redis.stock.ConnectionStock`; the pool keeps the
lease hooks. Sentinel and Cluster URLs have their own pools;
:func:`~resync.core.pools.redis.factory.create_redis_pool` picks the class
from the URL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio import ConnectionPool as DriverPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import ResponseError as RedisResponseError

from resync.core.deadlines import Deadline
from resync.core.exceptions import (
    REDIS_ERRORS,
    DeadlineExceededError,
    PoolConfigError,
    ResyncError,
)
from resync.core.pools.kernel.loops import start_task, stop_task
from resync.core.pools.kernel.pacing import ConnectBackoff
from resync.core.pools.kernel.pool import ConnectionPool, ConnectionPoolConfig
from resync.core.pools.redis.errors import SERVER_RULES, leaves_state_unknown
from resync.core.pools.redis.stock import ConnectionStock
from resync.core.pools.redis.url import STANDALONE_SCHEMES, TOPOLOGY_SCHEMES
from resync.core.redact import mask_url, url_secrets
from resync.core.resilience import BACKEND_BREAKER_DEFAULTS, BreakerSpec, build_circuit_breaker

__all__ = ["RedisConnectionPool"]

logger = logging.getLogger("resync.pool.redis")

# Options resync derives from ConnectionPoolConfig; passing them would fight it.
_RESERVED = frozenset({"max_connections", "timeout", "connection_pool", "connection_class"})


class RedisConnectionPool(ConnectionPool[Redis]):
    """A pool of Redis connections leased one per caller.

    ``redis_url`` is any URL redis-py accepts; ``client_options`` go to the
    driver (``decode_responses``, ``ssl_ca_certs``, ``socket_timeout``...).
    Defaults: ``decode_responses=True``, connect and socket timeouts equal to
    ``connection_timeout``, TCP keepalive, and two jittered retries of a
    command that failed on a dead socket (a restarted server costs callers
    nothing once it is back). Raises ``PoolConfigError`` (a ``ValueError``)
    for an empty or non-Redis URL.

    Circuit breaker (on by default; ``circuit_breaker``: ``True`` for the
    Redis defaults of :data:`~resync.core.resilience.BACKEND_BREAKER_DEFAULTS`
    -- open after 5 failures in a row, probe after 1 s --, a
    ``CircuitBreakerConfig``, a ``CircuitBreaker``, or ``False``/``None`` for
    none). Failures are connection errors and timeouts of the server or the
    network (connect refused or reset, a socket timeout, a connection lost
    under a lease); a ``ResponseError`` (``WRONGTYPE``, a script error) is the
    server answering, a success; the caller's own timeout, a queue timeout
    and a cancelled lease are no outcome. While open, a lease fails at once
    with :class:`~resync.core.exceptions.RedisUnavailableError` without
    queuing or connecting, and the pool's refill up to ``min_size`` stops
    too; after ``recovery_timeout`` one lease (or one refill) is the probe.
    Every refill or drain reopen after a failed one waits 0.5 s, doubling up
    to 30 s (:class:`~resync.core.pools.kernel.pacing.ConnectBackoff`).
    ``close()`` refuses leases with the "is shutdown" error whatever the
    breaker's state.
    """

    backend = "redis"
    errors = REDIS_ERRORS
    #: URL schemes this class accepts (a Sentinel subclass takes its own).
    url_schemes: ClassVar[frozenset[str]] = STANDALONE_SCHEMES

    def __init__(
        self,
        config: ConnectionPoolConfig,
        redis_url: str,
        *,
        circuit_breaker: BreakerSpec = True,
        **client_options: Any,
    ) -> None:
        if not isinstance(redis_url, str) or not redis_url.strip():
            raise PoolConfigError("redis_url cannot be empty: pass redis://host:port/db")
        try:
            parts = urlsplit(redis_url.strip())
            # Sentinel and Cluster URLs list hosts: parse_redis_target parses them.
            if parts.scheme in STANDALONE_SCHEMES:
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
            if scheme in TOPOLOGY_SCHEMES:
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
        self.circuit_breaker = build_circuit_breaker(
            config.pool_name, circuit_breaker, BACKEND_BREAKER_DEFAULTS["redis"]
        )
        self._stock = ConnectionStock(
            self.name,
            config,
            self.stats,
            self.gate,
            is_closing=lambda: self._shutdown,
            closed_error=self._closed_error,
            ping=self.ping,
            scrub=self.scrub,
            backoff=ConnectBackoff(lambda: self.circuit_breaker),
        )
        self._maintenance: asyncio.Task[None] | None = None
        self._secret_values = url_secrets(redis_url) + [
            str(client_options[key])
            for key in ("password", "ssl_password")
            if client_options.get(key)
        ]

    @property
    def display_target(self) -> str | None:
        """The Redis URL, password masked."""
        return mask_url(self.redis_url)

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
        # Even with min_size=0 one connection is opened: a bad URL, password or
        # TLS setting must fail initialize(), not the first request.
        await self._stock.open(self._build_driver(options), max(cfg.min_size, 1))
        self._maintenance = start_task(
            self._stock.maintain(), name=f"resync-redis-maintenance-{self.name}"
        )

    def _build_driver(self, options: dict[str, Any]) -> DriverPool:
        """The redis-py pool that parses the URL and makes connection objects."""
        return BlockingConnectionPool.from_url(
            self.redis_url,
            max_connections=self.config.max_size,
            timeout=self.config.connection_timeout,
            **options,
        )

    @property
    def _connection_pool(self) -> DriverPool | None:
        """The redis-py pool (``None`` before ``initialize()`` and after ``close()``)."""
        return self._stock.driver

    async def _close_pool(self) -> None:
        task, self._maintenance = self._maintenance, None
        await stop_task(task)
        await self._stock.close_all()

    # --- leasing -------------------------------------------------------------------

    async def _acquire_connection(self, timeout: float) -> Redis:
        return await self._stock.checkout(timeout)

    async def _release_connection(self, connection: Redis, error: BaseException | None) -> None:
        if error is not None:
            if isinstance(error, DeadlineExceededError):
                pass  # the caller's time ran out, not the server: no connection error
            elif self._is_backend_failure(error):
                self.stats.connection_errors += 1
            elif isinstance(error, RedisResponseError):  # WRONGTYPE, NOSCRIPT ...: an answer
                self.stats.server_errors += 1
        record = self._stock.record_of(connection)
        if record is None:  # pragma: no cover - only the stock's clients are handed out
            return
        if record.adapter.deadline is not None:
            record.adapter.unbind_deadline()
        await self._stock.check_in(record, clean=error is None or not leaves_state_unknown(error))

    def _bind_deadline(self, connection: Any, deadline: Deadline) -> Callable[[], object] | None:
        # Each command caps its socket timeouts by the time left (connections.py):
        # no timer is needed, and a command after the deadline is refused at once.
        record = self._stock.record_of(connection)
        if record is not None:
            record.adapter.bind_deadline(
                deadline, lambda late: self._deadline_error(late, "before a Redis command")
            )
        return None

    async def _ping(self, connection: Redis) -> None:
        if await connection.ping() is not True:
            raise RedisConnectionError("PING did not answer PONG")

    # --- connections (resync.core.pools.redis.stock) -----------------------------------

    def _open_connections(self) -> int:
        return self._stock.open_count

    def _idle_connections(self) -> int:
        return self._stock.idle_count

    async def _replace_connections(self, interval: float | None) -> int:
        return await self._stock.drain(interval)

    async def _apply_resize(self) -> None:
        await self._stock.resize(self.config)

    # --- errors --------------------------------------------------------------------------

    def _map_error(self, error: BaseException) -> BaseException:
        return SERVER_RULES.map_error(
            error,
            pool_name=self.name,
            family=self.errors,
            scrub=self.scrub,
            timeout_error=lambda cause: self._timeout_error(0.0, cause=cause),
        )

    def _is_backend_failure(self, error: BaseException) -> bool:
        return SERVER_RULES.is_backend_failure(error)

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
            logger.warning("pool '%s': INFO failed: %s", self.name, self.scrub(exc))
            return {}
        return {
            "pool_name": self.name,
            "url": mask_url(self.redis_url),
            "pool_max_connections": self.config.max_size,
            "open_connections": self._open_connections(),
            "idle_connections": self._stock.idle_count,
            "total_connections_made": info.get("total_connections_received", 0),
            "total_commands_processed": info.get("total_commands_processed", 0),
        }
