"""The seed's import paths are the same objects as their new homes, and stay patchable.

Step 10 moved the pools into ``kernel/`` and one package per backend; the seed's
code and tests import from ``base_pool``, ``db_pool``, ``redis_pool``,
``http_pool`` and ``pool_manager`` and patch module attributes there. This test
is the check that keeps those promises, instead of memory.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from unittest.mock import patch

import pytest

import resync.core.pools as pools

#: (seed path, name, real home)
CONTRACT = [
    ("resync.core.pools.base_pool", "ConnectionPool", "resync.core.pools.kernel.pool"),
    ("resync.core.pools.base_pool", "ConnectionPoolConfig", "resync.core.pools.kernel.config"),
    ("resync.core.pools.base_pool", "ConnectionPoolStats", "resync.core.pools.kernel.stats"),
    ("resync.core.pools.base_pool", "HealthResult", "resync.core.pools.kernel.health"),
    ("resync.core.pools.base_pool", "PoolState", "resync.core.pools.kernel.state"),
    ("resync.core.pools.db_pool", "DatabaseConnectionPool", "resync.core.pools.database.pool"),
    ("resync.core.pools.db_pool", "ConnectionPoolConfig", "resync.core.pools.kernel.config"),
    ("resync.core.pools.redis_pool", "RedisConnectionPool", "resync.core.pools.redis.pool"),
    ("resync.core.pools.redis_pool", "ConnectionPoolConfig", "resync.core.pools.kernel.config"),
    ("resync.core.pools.http_pool", "HTTPConnectionPool", "resync.core.pools.http.pool"),
    ("resync.core.pools.http_pool", "ConnectionPoolConfig", "resync.core.pools.kernel.config"),
    (
        "resync.core.pools.pool_manager",
        "get_connection_pool_manager",
        "resync.core.pools.pool_manager",
    ),
    ("resync.core.pools.pool_manager", "ConnectionPoolManager", "resync.core.pools.pool_manager"),
    (
        "resync.core.pools.database.credentials",
        "DatabaseCredentials",
        "resync.core.pools.database.credentials",
    ),
]


@pytest.mark.parametrize(("path", "name", "home"), CONTRACT)
def test_the_seed_path_gives_the_object_of_its_home(path: str, name: str, home: str) -> None:
    assert getattr(importlib.import_module(path), name) is getattr(
        importlib.import_module(home), name
    )


@pytest.mark.parametrize("name", pools.__all__)
def test_every_public_name_of_the_package_resolves_to_its_home(name: str) -> None:
    value = getattr(pools, name)
    home = importlib.import_module(value.__module__)
    assert getattr(home, name) is value
    assert name in dir(pools)


def test_all_is_sorted_and_unknown_names_raise_attribute_error() -> None:
    assert list(pools.__all__) == sorted(pools.__all__)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchPool'"):
        _ = pools.NoSuchPool  # type: ignore[attr-defined]


def test_exceptions_keep_their_seed_names() -> None:
    from resync.core import exceptions

    for name in ("TWSConnectionError", "DatabaseError", "ResyncError"):
        assert isinstance(getattr(exceptions, name), type)


def test_importing_the_package_imports_no_driver() -> None:
    code = (
        "import sys\n"
        "from resync.core.pools import ConnectionPool, ConnectionPoolConfig\n"
        "loaded = [m for m in ('sqlalchemy', 'redis', 'httpx', 'asyncpg', 'aiosqlite')"
        " if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == ""


def test_the_seeds_patches_still_reach_their_targets() -> None:
    import redis.asyncio

    import resync.core.pools.redis_pool as redis_pool
    import resync.settings

    assert redis_pool.redis is redis.asyncio
    with patch("resync.core.pools.redis_pool.redis") as fake:
        assert redis_pool.redis is fake
    assert redis_pool.redis is redis.asyncio
    original = resync.settings.settings
    with patch("resync.settings.settings") as fake_settings:
        assert resync.settings.settings is fake_settings
    assert resync.settings.settings is original
