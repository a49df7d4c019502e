"""Redis under Sentinel: leases of connections to whichever server is master now.

``RedisSentinelPool`` is a :class:`~resync.core.pools.redis.pool.RedisConnectionPool`
whose driver is redis-py's ``SentinelConnectionPool``: every connection it
makes is a ``SentinelManagedConnection`` that asks the Sentinels for the
master's address each time it (re)connects. So the lease contract is the
same as for one server -- ``async with pool.get_connection() as client`` gives
a ``Redis`` bound to one connection, admission equals connections, stats,
health, drain and resize are unchanged -- and a connection opened after a
failover reaches the new master.

What redis-py does not do, the pool adds. After ``SENTINEL FAILOVER`` (or an
automatic one) the old master keeps accepting writes until Sentinel demotes
it, which takes up to Sentinel's 10 s INFO period: a pooled connection still
open to it would write where nobody reads. A watcher task therefore follows
the Sentinels' ``+switch-master`` channel (and, should a message be lost,
asks for the master address every ``watch_interval`` seconds). On a switch it
closes every idle connection to the old master at once and marks the leased
ones, which are closed when their lease ends; a lease running at that moment
may still complete its commands on the old master. Once the old master is
demoted, a command on a connection to it fails with ``READONLY``, which
redis-py turns into a reconnect to the new master (the pool's two retries).

During the failover itself (Sentinel: ``down-after-milliseconds`` plus the
promotion, about a second for a forced failover) writes can fail; they come
out in the Redis error family like any connection error. Only the master is
leased; reading from replicas is not offered.

Trade-offs: one extra connection per pool to a Sentinel (the subscription)
and one ``SENTINEL MASTERS`` round trip per ``watch_interval``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from resync.core.exceptions import PoolConfigError
from resync.core.pools.kernel.loops import start_task, stop_task
from resync.core.pools.kernel.pool import ConnectionPoolConfig
from resync.core.pools.redis.connections import ConnectionRecord
from resync.core.pools.redis.pool import RedisConnectionPool
from resync.core.pools.redis.url import SENTINEL_SCHEMES, RedisTarget, parse_redis_target
from resync.core.redact import mask_url
from resync.core.resilience import BreakerSpec

__all__ = ["RedisSentinelPool"]

logger = logging.getLogger("resync.pool.redis")

_SWITCH_CHANNEL = "+switch-master"
_SENTINEL_SOCKET_OPTIONS = ("socket_connect_timeout", "socket_timeout", "socket_keepalive")


class RedisSentinelPool(RedisConnectionPool):
    """Leases connections to the master that Sentinel names for ``service_name``.

    ``redis_url``: ``redis+sentinel://[[user]:password@]host1:26379[,host2:26379...]/service[/db]``
    (see :mod:`resync.core.pools.redis.url`); the password authenticates at
    the Redis servers. ``sentinel_password`` authenticates at the Sentinels
    when they require one. ``watch_interval``: seconds between master-address
    checks besides the ``+switch-master`` subscription. Other options as for
    :class:`RedisConnectionPool`. A bad URL raises ``PoolConfigError``.
    """

    url_schemes: ClassVar[frozenset[str]] = SENTINEL_SCHEMES

    def __init__(
        self,
        config: ConnectionPoolConfig,
        redis_url: str,
        *,
        sentinel_password: str | None = None,
        watch_interval: float = 5.0,
        circuit_breaker: BreakerSpec = True,
        **client_options: Any,
    ) -> None:
        super().__init__(config, redis_url, circuit_breaker=circuit_breaker, **client_options)
        try:
            self.target: RedisTarget = parse_redis_target(self.redis_url)
        except ValueError as exc:
            raise PoolConfigError(f"redis_url {mask_url(redis_url)!r}: {exc}") from None
        if watch_interval <= 0:
            raise PoolConfigError(f"watch_interval must be > 0, got {watch_interval:g}")
        self.watch_interval = watch_interval
        self._sentinel_password = sentinel_password
        if sentinel_password:
            self._secret_values = sorted(
                {*self._secret_values, sentinel_password}, key=len, reverse=True
            )
        self._sentinel: Sentinel | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._watching = False
        #: Where the pool's connections go now, as (host, port).
        self.master: tuple[str, int] | None = None
        #: Master switches this pool has seen (and acted on).
        self.failovers_seen = 0

    @property
    def display_target(self) -> str | None:
        """The Sentinels and the service name, passwords masked."""
        return self.target.display

    # --- driver ------------------------------------------------------------------

    def _build_driver(self, options: dict[str, Any]) -> SentinelConnectionPool:
        target = self.target
        sentinel_options: dict[str, Any] = {
            key: options[key] for key in _SENTINEL_SOCKET_OPTIONS if key in options
        }
        # One attempt per Sentinel: discovery moves on to the next one, and
        # redis-py's default retries back off for seconds on a dead Sentinel.
        sentinel_options["retry"] = Retry(NoBackoff(), 0)
        if self._sentinel_password:
            sentinel_options["password"] = self._sentinel_password
        self._sentinel = sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts), sentinel_kwargs=sentinel_options
        )
        return SentinelConnectionPool(  # type: ignore[no-untyped-call]
            target.service_name,
            sentinel,
            db=target.db,
            username=target.username,
            password=target.password,
            max_connections=self.config.max_size,
            **options,
        )

    async def _setup_pool(self) -> None:
        await super()._setup_pool()
        driver = self._connection_pool
        if isinstance(driver, SentinelConnectionPool) and driver.master_address:
            host, port = driver.master_address
            self.master = (str(host), int(port))
        self._watching = True
        self._watcher = start_task(self._watch(), name=f"resync-sentinel-watch-{self.name}")

    async def _close_pool(self) -> None:
        task, self._watcher = self._watcher, None
        self._watching = False
        # redis-py's pub/sub read can absorb a cancellation (seen with 8.1:
        # get_message() returns None instead); the flag ends the loops then,
        # and the task is cancelled again until it has.
        await stop_task(task, recancel_every=0.2)
        await super()._close_pool()
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            try:
                await sentinel.aclose()
            except Exception as exc:
                logger.debug("pool '%s': closing Sentinel clients: %s", self.name, exc)

    # --- following the master ------------------------------------------------------

    async def _watch(self) -> None:
        """Forever: follow ``+switch-master``; on errors retry with backoff."""
        backoff = 0.1
        while self._watching:
            try:
                await self._follow()
            except (RedisError, OSError, TimeoutError) as exc:
                logger.debug("pool '%s': Sentinel watch: %s", self.name, self.scrub(exc))
            except Exception:  # a bug must not end the watch silently
                logger.exception("pool '%s': Sentinel watch failed", self.name)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.watch_interval)

    async def _follow(self) -> None:
        sentinel = self._sentinel
        if sentinel is None:
            return
        # discover_master() puts a Sentinel that answered first: subscribe there.
        await self._check_master()
        pubsub = sentinel.sentinels[0].pubsub()
        try:
            await pubsub.subscribe(_SWITCH_CHANNEL)
            await self._check_master()  # a switch may have happened before the subscription
            while self._watching:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=self.watch_interval
                )
                if message is None:
                    await self._check_master()
                    continue
                data = message.get("data")
                fields = (data.decode() if isinstance(data, bytes) else str(data)).split()
                # "<name> <old-ip> <old-port> <new-ip> <new-port>"
                if len(fields) == 5 and fields[0] == self.target.service_name:
                    await self._master_moved((fields[3], int(fields[4])))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _check_master(self) -> None:
        sentinel = self._sentinel
        if sentinel is None:
            return
        async with asyncio.timeout(self.config.connection_timeout):
            host, port = await sentinel.discover_master(self.target.service_name)
        await self._master_moved((str(host), int(port)))

    async def _master_moved(self, address: tuple[str, int]) -> None:
        """Retire every connection that does not go to ``address``."""
        if address == self.master or self._shutdown:
            return
        old, self.master = self.master, address
        if old is None:  # first sighting: nothing was connected elsewhere
            return
        self.failovers_seen += 1

        def stale(record: ConnectionRecord) -> bool:
            conn: Any = record.conn
            return (str(conn.host), int(conn.port)) != address

        retired = await self._stock.retire(stale)
        logger.warning(
            "pool '%s': Sentinel moved master %r from %s to %s:%d; %d connection(s) retired",
            self.name,
            self.target.service_name,
            f"{old[0]}:{old[1]}",
            address[0],
            address[1],
            retired,
        )

    def _details(self) -> dict[str, Any]:
        master = self.master
        return {
            "topology": "sentinel",
            "target": self.target.display,
            "service": self.target.service_name,
            "master": f"{master[0]}:{master[1]}" if master else None,
            "failovers_seen": self.failovers_seen,
        }
