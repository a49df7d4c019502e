"""The seed's contract path for the Redis pool.

The real home is :mod:`resync.core.pools.redis.pool`; this module only
re-exports it. ``redis`` is the ``redis.asyncio`` module, bound here because
the seed's tests patch ``resync.core.pools.redis_pool.redis``.
"""

from __future__ import annotations

import redis.asyncio as redis

from resync.core.pools.kernel.config import ConnectionPoolConfig
from resync.core.pools.redis.pool import RedisConnectionPool

__all__ = ["ConnectionPoolConfig", "RedisConnectionPool", "redis"]
