"""Typed connection pools sharing one admission path, one set of stats and one lifecycle.

Every public pool name can be imported from here::

    from resync.core.pools import ConnectionPoolConfig, DatabaseConnectionPool

The kernel's names (``ConnectionPool``, ``ConnectionPoolConfig``, ...) are
imported at once; the backend classes lazily, on first use, so that importing
this package imports no driver (SQLAlchemy, redis-py, httpx) until a pool of
that backend is asked for. The seed's module paths (``base_pool``, ``db_pool``,
``redis_pool``, ``http_pool``, ``pool_manager``) keep working. Where each name
really lives, and why: ARCHITECTURE.md at the repository root.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from resync.core.pools.kernel.adaptive import AdaptiveLimit
from resync.core.pools.kernel.admission import Priority
from resync.core.pools.kernel.config import ConnectionPoolConfig
from resync.core.pools.kernel.health import HealthResult
from resync.core.pools.kernel.pool import ConnectionPool
from resync.core.pools.kernel.state import PoolState
from resync.core.pools.kernel.stats import ConnectionPoolStats

if TYPE_CHECKING:
    from resync.core.pools.database.credentials import CredentialSource, DatabaseCredentials
    from resync.core.pools.database.pool import DatabaseConnectionPool
    from resync.core.pools.http.pool import HTTPConnectionPool
    from resync.core.pools.pool_manager import (
        ConnectionPoolManager,
        get_connection_pool_manager,
        reset_connection_pool_manager,
    )
    from resync.core.pools.redis.cluster import RedisClusterPool
    from resync.core.pools.redis.pool import RedisConnectionPool
    from resync.core.pools.redis.sentinel import RedisSentinelPool
    from resync.core.pools.resource.pool import ResourcePool

__all__ = [
    "AdaptiveLimit",
    "ConnectionPool",
    "ConnectionPoolConfig",
    "ConnectionPoolManager",
    "ConnectionPoolStats",
    "CredentialSource",
    "DatabaseConnectionPool",
    "DatabaseCredentials",
    "HTTPConnectionPool",
    "HealthResult",
    "PoolState",
    "Priority",
    "RedisClusterPool",
    "RedisConnectionPool",
    "RedisSentinelPool",
    "ResourcePool",
    "get_connection_pool_manager",
    "reset_connection_pool_manager",
]

#: Lazily imported names and the module that is their home.
_LAZY = {
    "ConnectionPoolManager": "resync.core.pools.pool_manager",
    "CredentialSource": "resync.core.pools.database.credentials",
    "DatabaseConnectionPool": "resync.core.pools.database.pool",
    "DatabaseCredentials": "resync.core.pools.database.credentials",
    "HTTPConnectionPool": "resync.core.pools.http.pool",
    "RedisClusterPool": "resync.core.pools.redis.cluster",
    "RedisConnectionPool": "resync.core.pools.redis.pool",
    "RedisSentinelPool": "resync.core.pools.redis.sentinel",
    "ResourcePool": "resync.core.pools.resource.pool",
    "get_connection_pool_manager": "resync.core.pools.pool_manager",
    "reset_connection_pool_manager": "resync.core.pools.pool_manager",
}


def __getattr__(name: str) -> Any:
    """Import a backend's name on first use (PEP 562); cached in the package after."""
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module 'resync.core.pools' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
