"""Typed connection pools sharing one admission path, one set of stats and one lifecycle.

Backends live in their own modules (``db_pool``, ``redis_pool``, ``http_pool``)
and are imported from there, so that importing the base does not import every
driver.
"""

from __future__ import annotations

from resync.core.pools.kernel.pool import (
    ConnectionPool,
    ConnectionPoolConfig,
    ConnectionPoolStats,
    HealthResult,
    PoolState,
)

__all__ = [
    "ConnectionPool",
    "ConnectionPoolConfig",
    "ConnectionPoolStats",
    "HealthResult",
    "PoolState",
]
