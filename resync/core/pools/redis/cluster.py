"""Redis Cluster: leases of one shared ``redis.asyncio.cluster.RedisCluster`` client.

A cluster command goes to the node that owns its key's slot, so a lease
cannot be one connection the way a single-server Redis lease is. A lease
here yields the pool's one ``RedisCluster`` client (as the HTTP pool yields
its one ``httpx.AsyncClient``) and the pool adds in front of it what redis-py
lacks: FIFO admission of at most ``max_size`` leases bounded by
``connection_timeout``, stats, a health round trip, errors in the Redis
family (``RedisClusterException`` included), ``drain()`` and ``resize()``.

Trade-offs of sharing the client:

- redis-py keeps up to ``max_size`` connections *per node*, opened on demand.
  A lease that runs its commands one after another uses at most one
  connection per node, so ``max_size`` leases fit; commands run concurrently
  inside one lease (``asyncio.gather``) take more, and past the cap redis-py
  raises ``MaxConnectionsError`` -- the pool's timeout error.
- A command cancelled in flight closes its connection (redis-py disconnects
  on any interruption of a read), so no reply reaches another lease, but the
  pool does not see which connection a lease used: ``connection_errors``
  counts failed leases, not sockets.
- MOVED/ASK redirections, topology refreshes and retries after a node failure
  are redis-py's; ``require_full_coverage`` stays on (a slot without a node
  is an error, not a silent miss). The client uses database 0 only.

``connection_creations`` / ``connection_closures`` count real socket opens
and closes (a connection class that reports them); ``idle_connections``
counts open connections that no command uses now.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from resync.core.exceptions import REDIS_ERRORS, PoolConfigError
from resync.core.pools.kernel.pacing import drain_pause
from resync.core.pools.kernel.pool import ConnectionPool, ConnectionPoolConfig
from resync.core.pools.kernel.stats import ConnectionPoolStats
from resync.core.pools.redis.errors import CLUSTER_RULES
from resync.core.pools.redis.url import RedisTarget, parse_redis_target
from resync.core.redact import mask_url, url_secrets
from resync.core.resilience import BACKEND_BREAKER_DEFAULTS, BreakerSpec, build_circuit_breaker

__all__ = ["RedisClusterPool"]

logger = logging.getLogger("resync.pool.redis")

_RESERVED = frozenset({"max_connections", "startup_nodes", "host", "port", "db"})


# --- redis-py internals ---------------------------------------------------------
# A ClusterNode has no public view of its connections: the list of every
# connection it made (``_connections``) and its free list (``_free``) are the
# only way to count open and idle sockets, reopen idle ones in a drain and
# drop surplus idle ones on resize. Every read of them is in these three
# functions, so a redis-py upgrade that renames them breaks here only.


def _node_connections(node: ClusterNode) -> list[Connection]:
    """Every connection ``node`` made (open or not, busy or free)."""
    return node._connections


def _node_free(node: ClusterNode) -> collections.deque[Connection]:
    """The connections of ``node`` no command uses now."""
    return node._free


def _size_node_free(node: ClusterNode, maxlen: int) -> None:
    """Give ``node``'s free list room for ``maxlen`` connections.

    redis-py's free list silently drops its oldest entry when full.
    """
    node._free = collections.deque(node._free, maxlen=maxlen)


def _counting_connection_class(stats: ConnectionPoolStats) -> type[Connection]:
    """A ``Connection`` class that counts its socket opens and closes in ``stats``."""

    class ResyncClusterConnection(Connection):
        async def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
            was_connected = self.is_connected
            await super().connect_check_health(*args, **kwargs)
            if not was_connected and self.is_connected:
                stats.connection_creations += 1

        async def disconnect(self, *args: Any, **kwargs: Any) -> None:
            was_connected = self.is_connected
            try:
                await super().disconnect(*args, **kwargs)
            finally:
                if was_connected and not self.is_connected:
                    stats.connection_closures += 1

    return ResyncClusterConnection


class RedisClusterPool(ConnectionPool[RedisCluster]):
    """Admission, stats and errors in front of one ``RedisCluster`` client.

    ``redis_url``: ``redis+cluster://[[user]:password@]host1:6379[,host2:6379...]``
    (any nodes to start from). ``client_options`` go to ``RedisCluster``
    (``decode_responses``, ``ssl``...); defaults as for
    :class:`~resync.core.pools.redis.pool.RedisConnectionPool`:
    ``decode_responses=True``, connect and socket timeouts of
    ``connection_timeout``, TCP keepalive. A bad URL raises ``PoolConfigError``.

    Circuit breaker: on by default, as for
    :class:`~resync.core.pools.redis.pool.RedisConnectionPool` (the Redis
    defaults; ``False``/``None`` for none): while open, a lease fails at once
    with :class:`~resync.core.exceptions.RedisUnavailableError` and sends
    nothing; the nodes' connections are redis-py's own, opened per command.
    """

    backend = "redis"
    errors = REDIS_ERRORS

    def __init__(
        self,
        config: ConnectionPoolConfig,
        redis_url: str,
        *,
        circuit_breaker: BreakerSpec = True,
        **client_options: Any,
    ) -> None:
        if not isinstance(redis_url, str) or not redis_url.strip():
            raise PoolConfigError("redis_url cannot be empty: pass redis+cluster://host:port")
        try:
            target = parse_redis_target(redis_url)
        except ValueError as exc:
            raise PoolConfigError(f"redis_url {mask_url(redis_url)!r}: {exc}") from None
        if target.kind != "cluster":
            raise PoolConfigError(
                f"RedisClusterPool needs a redis+cluster:// URL, got {mask_url(redis_url)!r}"
            )
        reserved = _RESERVED.intersection(client_options)
        if reserved:
            raise PoolConfigError(
                f"{', '.join(sorted(reserved))} cannot be passed to RedisClusterPool: "
                "nodes come from the URL, sizes from ConnectionPoolConfig"
            )
        super().__init__(config)
        self.target: RedisTarget = target
        self.redis_url = redis_url.strip()
        self.client_options = client_options
        self.circuit_breaker = build_circuit_breaker(
            config.pool_name, circuit_breaker, BACKEND_BREAKER_DEFAULTS["redis"]
        )
        self._client: RedisCluster | None = None
        self._secret_values = url_secrets(redis_url) + [
            str(client_options[key]) for key in ("password",) if client_options.get(key)
        ]

    @property
    def display_target(self) -> str | None:
        """The cluster's seed nodes, password masked."""
        return self.target.display

    # --- lifecycle ----------------------------------------------------------------

    async def _setup_pool(self) -> None:
        cfg = self.config
        target = self.target
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": cfg.connection_timeout,
            "socket_timeout": cfg.connection_timeout,
            "socket_keepalive": True,
        }
        options.update(self.client_options)
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
            username=target.username,
            password=target.password,
            max_connections=cfg.max_size,
            **options,
        )
        self._client = client
        # Nodes discovered later are built from connection_kwargs; the startup
        # nodes were built already.
        counting = _counting_connection_class(self.stats)
        client.connection_kwargs["connection_class"] = counting
        for node in client.startup_nodes:
            node.connection_class = counting
        async with asyncio.timeout(cfg.connection_timeout):
            await client.initialize()
            # Concurrent PINGs each need a connection: this opens min_size per primary.
            await asyncio.gather(
                *(
                    client.ping(target_nodes=RedisCluster.PRIMARIES)
                    for _ in range(max(cfg.min_size, 1))
                )
            )

    async def _close_pool(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
            # aclose() does nothing while the client waits to re-learn the
            # topology (after a node failed), leaving every socket open.
            manager = client.nodes_manager
            await manager.aclose()
            await manager.aclose("startup_nodes")

    # --- leasing -------------------------------------------------------------------

    async def _acquire_connection(self, timeout: float) -> RedisCluster:
        client = self._client
        if client is None:  # pragma: no cover - the lease checks the state first
            raise self._closed_error()
        return client

    async def _ping(self, connection: RedisCluster) -> None:
        if not await connection.ping(target_nodes=RedisCluster.PRIMARIES):
            raise RedisConnectionError("PING did not answer PONG on every primary")

    # --- connections -------------------------------------------------------------------

    def _nodes(self) -> list[ClusterNode]:
        """Every node object holding connections: the routing table's and the
        startup nodes redis-py keeps (distinct objects) for topology refreshes."""
        client = self._client
        if client is None:
            return []
        nodes = {id(node): node for node in client.get_nodes()}
        for node in client.nodes_manager.startup_nodes.values():
            nodes.setdefault(id(node), node)
        return list(nodes.values())

    def _open_connections(self) -> int:
        return sum(1 for node in self._nodes() for c in _node_connections(node) if c.is_connected)

    def _idle_connections(self) -> int:
        return sum(1 for node in self._nodes() for c in _node_free(node) if c.is_connected)

    async def _replace_connections(self, interval: float | None) -> int:
        """Close and reopen every open connection, one at a time.

        An idle connection is taken out of its node's free list, reopened and
        put back; a busy one is marked, and redis-py closes it when the
        command using it finishes (it reconnects on its next use).
        """
        snapshot = [
            (node, conn)
            for node in self._nodes()
            for conn in _node_connections(node)
            if conn.is_connected
        ]
        pause = drain_pause(interval, len(snapshot))
        for node, conn in snapshot:
            if self._shutdown:
                break
            free = _node_free(node)
            if conn in free:
                free.remove(conn)
                try:
                    await conn.disconnect()
                    await conn.connect()  # type: ignore[no-untyped-call]
                except Exception as exc:  # reconnects on its next use
                    logger.info("pool '%s': reopening during drain: %s", self.name, self.scrub(exc))
                finally:  # the node's free list now (a resize may have replaced it)
                    _node_free(node).append(conn)
            elif conn.is_connected:
                conn.mark_for_reconnect()  # type: ignore[no-untyped-call]
            if pause:
                await asyncio.sleep(pause)
        return len(snapshot)

    async def _apply_resize(self) -> None:
        """New per-node cap; idle connections above it are closed now."""
        client = self._client
        if client is None:
            return
        cap = self.config.max_size
        client.connection_kwargs["max_connections"] = cap
        for node in self._nodes():
            node.max_connections = cap
            connections, free = _node_connections(node), _node_free(node)
            surplus: list[Connection] = []
            while len(connections) - len(surplus) > cap and free:
                surplus.append(free.popleft())
            for conn in surplus:
                connections.remove(conn)
            # Room in the free list for every connection the node still has.
            _size_node_free(node, max(cap, len(connections)))
            for conn in surplus:
                await conn.disconnect()

    # --- errors ----------------------------------------------------------------------

    def _map_error(self, error: BaseException) -> BaseException:
        return CLUSTER_RULES.map_error(
            error,
            pool_name=self.name,
            family=self.errors,
            scrub=self.scrub,
            timeout_error=lambda cause: self._timeout_error(0.0, cause=cause),
        )

    def _is_backend_failure(self, error: BaseException) -> bool:
        return CLUSTER_RULES.is_backend_failure(error)

    def _secrets(self) -> list[str]:
        return self._secret_values

    def _details(self) -> dict[str, Any]:
        nodes = self._nodes()
        return {
            "topology": "cluster",
            "target": self.target.display,
            "nodes": sorted({node.name for node in nodes}),
            "primaries": len(self._client.get_primaries()) if self._client is not None else 0,
            "open_connections": self._open_connections(),
        }
