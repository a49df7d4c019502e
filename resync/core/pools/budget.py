"""Connection budget: do all replicas' pools fit in the servers' limits?

Every process opens up to ``max_size`` connections per pool, and a deployment
runs ``WORKERS`` processes in each of ``REPLICAS`` instances. The total must stay under the
server's limit -- PostgreSQL's ``max_connections`` minus the slots reserved for
superusers, Redis' ``maxclients`` -- or the last replicas to start get
"too many clients" at the worst moment. At start the manager asks each server
for its limit (best effort, bounded by the pool's timeout) and warns with the
numbers when the budget is over.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from resync.core.pools.base_pool import ConnectionPool

__all__ = ["BudgetLine", "check_budget", "server_limit"]

logger = logging.getLogger("resync.manager")


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One pool's share of its server's connection limit."""

    pool: str
    backend: str
    per_process: int
    processes: int
    server_limit: int | None

    @property
    def total(self) -> int:
        return self.per_process * self.processes

    @property
    def over(self) -> bool:
        return self.server_limit is not None and self.total > self.server_limit


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
        return int(max_connections) - int(reserved)


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
