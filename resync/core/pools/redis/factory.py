"""``create_redis_pool``: the pool class a ``REDIS_URL`` calls for.

Kept apart from :mod:`.url` so that the URL rules stay driver-free (settings
import them) and no pool module has to import the URL module's caller: the
factory sits above the three pools, which sit above :mod:`.url`.
"""

from __future__ import annotations

from typing import Any

from resync.core.exceptions import PoolConfigError
from resync.core.pools.kernel.config import ConnectionPoolConfig
from resync.core.pools.kernel.pool import ConnectionPool
from resync.core.pools.redis.url import parse_redis_target
from resync.core.redact import mask_url

__all__ = ["create_redis_pool"]


def create_redis_pool(
    config: ConnectionPoolConfig,
    redis_url: str,
    *,
    sentinel_password: str | None = None,
    **options: Any,
) -> ConnectionPool[Any]:
    """The pool class ``redis_url`` calls for, constructed (not opened).

    ``redis://``, ``rediss://``, ``unix://`` → :class:`RedisConnectionPool`;
    ``redis+sentinel://`` → :class:`RedisSentinelPool`; ``redis+cluster://`` →
    :class:`RedisClusterPool`. ``options`` go to the class. Raises
    ``PoolConfigError`` for a bad URL, or for ``sentinel_password`` with a URL
    that is not a Sentinel one. The driver (redis-py) is imported only for the
    class chosen.
    """
    try:
        kind = parse_redis_target(redis_url).kind if isinstance(redis_url, str) else ""
    except ValueError as exc:
        raise PoolConfigError(f"redis_url {mask_url(redis_url)!r}: {exc}") from None
    if sentinel_password and kind != "sentinel":
        raise PoolConfigError("a Sentinel password needs a redis+sentinel:// URL")
    if kind == "sentinel":
        from resync.core.pools.redis.sentinel import RedisSentinelPool

        return RedisSentinelPool(config, redis_url, sentinel_password=sentinel_password, **options)
    if kind == "cluster":
        from resync.core.pools.redis.cluster import RedisClusterPool

        return RedisClusterPool(config, redis_url, **options)
    from resync.core.pools.redis.pool import RedisConnectionPool

    return RedisConnectionPool(config, redis_url, **options)
