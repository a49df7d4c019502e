"""REDIS_URL topologies: parsing, settings validation and which pool class a URL builds."""

from __future__ import annotations

import pytest

from resync.core.exceptions import PoolConfigError, SettingsError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.manager.specs import build_pools
from resync.core.pools.redis.cluster import RedisClusterPool
from resync.core.pools.redis.factory import create_redis_pool
from resync.core.pools.redis.sentinel import RedisSentinelPool
from resync.core.pools.redis.url import parse_redis_target
from resync.core.pools.redis_pool import RedisConnectionPool
from resync.settings import Settings

CONFIG = ConnectionPoolConfig(pool_name="redis", min_size=1, max_size=2)


def test_sentinel_url_names_hosts_service_database_and_credentials() -> None:
    target = parse_redis_target("redis+sentinel://app:s%3Acret@h1:26380,h2,[::1]:26381/cache/3")
    assert target.kind == "sentinel"
    assert target.hosts == (("h1", 26380), ("h2", 26379), ("::1", 26381))
    assert (target.service_name, target.db) == ("cache", 3)
    assert (target.username, target.password) == ("app", "s:cret")
    assert "s%3Acret" not in repr(target) and "s:cret" not in target.display


def test_cluster_url_defaults_the_port_and_allows_only_database_zero() -> None:
    target = parse_redis_target("redis+cluster://:pw@n1,n2:7001")
    assert (target.kind, target.hosts, target.password) == (
        "cluster",
        (("n1", 6379), ("n2", 7001)),
        "pw",
    )
    assert parse_redis_target("redis+cluster://n1/0").db == 0
    with pytest.raises(ValueError, match="only database 0"):
        parse_redis_target("redis+cluster://n1/1")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h1:26379", "service name"),
        ("redis+sentinel://h1/svc/x", "database must be a number"),
        ("redis+sentinel://h1/svc/0/extra", "/service_name"),
        ("redis+sentinel://h1:port/svc", "port of 'h1' must be a number"),
        ("redis+sentinel://h1:70000/svc", "between 1 and 65535"),
        ("redis+sentinel://h1,,h2/svc", "every host"),
        ("redis+sentinel://h1/svc?ssl=true", "no query string"),
        ("redis+cluster://[::1/", "IPv6"),
        ("memcached://h1", "must start with"),
    ],
)
def test_bad_topology_urls_say_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_redis_target(url)


def test_standalone_urls_are_left_to_redis_py() -> None:
    for url in ("redis://h:6379/0", "rediss://u:p@h/1", "unix:///tmp/redis.sock"):
        assert parse_redis_target(url).kind == "standalone"


def test_create_redis_pool_picks_the_class_from_the_scheme() -> None:
    assert type(create_redis_pool(CONFIG, "redis://127.0.0.1/0")) is RedisConnectionPool
    assert isinstance(create_redis_pool(CONFIG, "redis+sentinel://h/svc"), RedisSentinelPool)
    assert isinstance(create_redis_pool(CONFIG, "redis+cluster://h"), RedisClusterPool)
    with pytest.raises(PoolConfigError, match="Sentinel password"):
        create_redis_pool(CONFIG, "redis://h/0", sentinel_password="x")


def test_the_plain_redis_pool_points_topology_urls_to_create_redis_pool() -> None:
    with pytest.raises(PoolConfigError, match="create_redis_pool"):
        RedisConnectionPool(CONFIG, "redis+sentinel://h/svc")


def test_settings_accept_sentinel_and_cluster_urls_and_mask_them() -> None:
    settings = Settings(
        _env_file=None,
        REDIS_URL="redis+sentinel://:Master-Pw-1@h1:26379,h2:26379/mymaster/2",
        REDIS_SENTINEL_PASSWORD="Sentinel-Pw-2",
    )
    shown = f"{settings!r} {settings.masked()}"
    assert "Master-Pw-1" not in shown and "Sentinel-Pw-2" not in shown
    ((spec, pool),) = [(s, p) for s, p in build_pools(settings) if s.backend == "redis"]
    assert isinstance(pool, RedisSentinelPool)
    assert "Sentinel-Pw-2" not in repr(spec)
    assert "Sentinel-Pw-2" in pool._secrets()  # scrubbed from every error the pool raises
    cluster = Settings(_env_file=None, REDIS_URL="redis+cluster://n1:7000,n2:7001")
    assert any(isinstance(p, RedisClusterPool) for _, p in build_pools(cluster))


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"REDIS_URL": "redis+sentinel://h1"}, "REDIS_URL: redis\\+sentinel:// needs"),
        ({"REDIS_URL": "redis+cluster://h/2"}, "only database 0"),
        ({"REDIS_URL": "redis+foo://h"}, "redis\\+sentinel:// or redis\\+cluster://"),
        (
            {"REDIS_URL": "redis://h:6379/0", "REDIS_SENTINEL_PASSWORD": "x"},
            "REDIS_SENTINEL_PASSWORD needs a redis\\+sentinel://",
        ),
    ],
)
def test_settings_refuse_bad_topology_urls(values: dict[str, str], problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        Settings(_env_file=None, **values)
