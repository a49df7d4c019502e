"""Connection budget: do all replicas' pools fit in the servers' limits?

Every process opens up to ``max_size`` connections per pool, and a deployment
runs ``WORKERS`` processes in each of ``REPLICAS`` instances. The total must stay under the
server's limit -- PostgreSQL's ``max_connections`` minus the slots reserved for
superusers (and ``reserved_connections`` on 16+), Redis' ``maxclients`` -- or
the last replicas to start get "too many clients" at the worst moment. At
start the manager asks each server for its limit (best effort, bounded by
the pool's timeout) and warns with the numbers when the budget is over.

``resync plan`` uses the same arithmetic ahead of time (:func:`plan_budget`,
:func:`read_server_limits`) and adds a sizing suggestion
(:class:`PoolSizing`, HikariCP's rule of thumb).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from resync.core.pools.kernel.pool import ConnectionPool
from resync.core.pools.manager.specs import build_pools, pool_specs

__all__ = [
    "BudgetLine",
    "PoolSizing",
    "check_budget",
    "plan_budget",
    "read_server_limits",
    "server_limit",
]

logger = logging.getLogger("resync.manager")


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One pool's share of its server's connection limit."""

    pool: str
    backend: str
    per_process: int
    processes: int
    server_limit: int | None
    #: Processes per replica (the other factor of ``processes``).
    workers: int = 1
    #: Where ``server_limit`` came from: "server", "flag", or "" when unknown.
    source: str = "server"

    @property
    def total(self) -> int:
        return self.per_process * self.processes

    @property
    def over(self) -> bool:
        return self.server_limit is not None and self.total > self.server_limit

    @property
    def headroom(self) -> int | None:
        """Connections left for everything else (migrations, psql, exporters)."""
        return None if self.server_limit is None else self.server_limit - self.total

    @property
    def max_replicas(self) -> int | None:
        """The most replicas (pods, surge and canary included) that fit the limit."""
        if self.server_limit is None:
            return None
        return self.server_limit // (self.per_process * self.workers)


async def server_limit(pool: ConnectionPool[Any]) -> int | None:
    """The connection limit of ``pool``'s server, or None when it cannot be known."""
    try:
        async with asyncio.timeout(pool.config.connection_timeout):
            if pool.backend == "database":
                return await _postgres_limit(pool)
            if pool.backend == "redis":
                return await _redis_limit(pool)
    except Exception as exc:  # a budget we cannot read is only a missing warning
        logger.debug("pool '%s': connection limit unknown: %s", pool.name, type(exc).__name__)
    return None


async def _postgres_limit(pool: ConnectionPool[Any]) -> int | None:
    from sqlalchemy import text

    async with pool.get_connection() as session:
        if session.bind.dialect.name != "postgresql":
            return None
        rows = await session.execute(
            text(
                "SELECT current_setting('max_connections')::int, "
                "current_setting('superuser_reserved_connections')::int"
            )
        )
        max_connections, reserved = rows.one()
        # PostgreSQL 16+ also keeps reserved_connections for pg_use_reserved_connections.
        extra = await session.execute(text("SELECT current_setting('reserved_connections', true)"))
        more = extra.scalar_one_or_none()
        return int(max_connections) - int(reserved) - (int(more) if more else 0)


async def _redis_limit(pool: ConnectionPool[Any]) -> int | None:
    async with pool.get_connection() as client:
        reply = await client.config_get("maxclients")
        value = reply.get("maxclients") or reply.get(b"maxclients")
        return int(value) if value is not None else None


async def check_budget(pools: list[ConnectionPool[Any]], processes: int) -> list[BudgetLine]:
    """One line per pool; logs a warning for each backend over its limit."""
    limits = await asyncio.gather(*(server_limit(p) for p in pools))
    lines = [
        BudgetLine(p.name, p.backend, p.config.max_size, processes, limit)
        for p, limit in zip(pools, limits, strict=True)
    ]
    for line in lines:
        if line.over:
            logger.warning(
                "connection budget of pool '%s' is over: %d processes x max_size %d = %d "
                "connections, but the %s server allows %d; lower max_size, WORKERS or REPLICAS",
                line.pool,
                line.processes,
                line.per_process,
                line.total,
                line.backend,
                line.server_limit,
            )
    return lines


# --- planning ahead (resync plan) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolSizing:
    """HikariCP's rule of thumb for the connections a database server can use.

    ``connections = (core_count * 2) + effective_spindle_count``: a database
    server works on about two connections per core (one running, one waiting
    on I/O) plus one per disk that can seek independently; ``spindles`` is 0
    when the working set is in memory and approaches the disk count as the
    cache hit rate falls (an SSD counts as about 1). More connections than
    that do not get more work done: they queue for CPU and locks on the
    server, where resync's FIFO admission cannot see them. The figure is for
    the whole fleet, so each process gets its share.
    """

    core_count: int
    spindles: int
    processes: int

    @property
    def connections(self) -> int:
        return self.core_count * 2 + self.spindles

    @property
    def per_process(self) -> int:
        return max(1, math.ceil(self.connections / max(self.processes, 1)))

    def explain(self, configured_max: int) -> list[str]:
        """The suggestion in words, compared with ``configured_max`` per process."""
        lines = [
            "connections = (core_count x 2) + effective_spindle_count"
            f" = ({self.core_count} x 2) + {self.spindles} = {self.connections}"
            " busy connections for the whole database server",
            f"over {self.processes} process(es): DB_POOL_MAX_SIZE ~ {self.per_process}"
            f" (configured: {configured_max}, {configured_max * self.processes} in total)",
        ]
        if configured_max > self.per_process:
            lines.append(
                "past that, extra connections wait on each other inside the server; lower "
                "DB_POOL_MAX_SIZE, or put PgBouncer (transaction mode) in front with "
                f"default_pool_size ~ {self.connections}"
            )
        return lines


def plan_budget(
    source: object,
    replicas: int,
    workers: int,
    limits: Mapping[str, tuple[int | None, str]],
) -> list[BudgetLine]:
    """One line per pool ``source`` (settings) enables, for ``replicas`` x ``workers``.

    ``limits`` maps a pool name to (server limit, where it came from); pools
    missing from it have no known limit.
    """
    lines = []
    for spec in pool_specs(source):
        limit, origin = limits.get(spec.name, (None, ""))
        lines.append(
            BudgetLine(
                spec.name,
                spec.backend,
                spec.config.max_size,
                replicas * workers,
                limit,
                workers=workers,
                source=origin if limit is not None else "",
            )
        )
    return lines


async def read_server_limits(source: object, timeout: float) -> dict[str, int | None]:
    """Ask each configured server for its connection limit, concurrently.

    Each pool is opened, asked and closed within ``timeout`` seconds; a server
    that cannot be reached (or has no limit, like SQLite or an HTTP upstream)
    gives None. Never raises for a server's error.
    """

    async def ask(pool: ConnectionPool[Any]) -> int | None:
        try:
            async with asyncio.timeout(timeout):
                await pool.initialize()
                return await server_limit(pool)
        except Exception as exc:
            logger.info("pool '%s': limit not read: %s", pool.name, type(exc).__name__)
            return None
        finally:
            await pool.close(drain_timeout=0)

    pools = [pool for _, pool in build_pools(source)]
    found = await asyncio.gather(*(ask(pool) for pool in pools))
    return {pool.name: limit for pool, limit in zip(pools, found, strict=True)}
