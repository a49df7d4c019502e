"""The seed's contract path for the base pool.

The real home is :mod:`resync.core.pools.kernel.pool` (see ARCHITECTURE.md);
this module only re-exports it, so ``from resync.core.pools.base_pool import
ConnectionPool, ConnectionPoolConfig, ConnectionPoolStats`` keeps working.
"""

from __future__ import annotations

from resync.core.pools.kernel.config import ConnectionPoolConfig
from resync.core.pools.kernel.health import HealthResult
from resync.core.pools.kernel.pool import ConnectionPool, ConnectionType
from resync.core.pools.kernel.state import PoolState
from resync.core.pools.kernel.stats import ConnectionPoolStats

__all__ = [
    "ConnectionPool",
    "ConnectionPoolConfig",
    "ConnectionPoolStats",
    "ConnectionType",
    "HealthResult",
    "PoolState",
]
