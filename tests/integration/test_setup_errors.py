"""Setup errors say what happened (issue 15.7: a silent server gave an empty reason)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from resync.core.exceptions import PoolSetupError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.pools.redis_pool import RedisConnectionPool
from tests.helpers.net import free_port

PASSWORD = "Zq7SetupSentinel"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def pools(port: int) -> list[tuple[type[Any], str]]:
    return [
        (RedisConnectionPool, f"redis://:{PASSWORD}@127.0.0.1:{port}/0"),
        (HTTPConnectionPool, f"http://api:{PASSWORD}@127.0.0.1:{port}"),
        (DatabaseConnectionPool, f"postgresql+asyncpg://app:{PASSWORD}@127.0.0.1:{port}/db"),
    ]


async def test_a_silent_server_is_described_by_what_happened(silent_port: int) -> None:
    for cls, url in pools(silent_port):
        config = ConnectionPoolConfig(pool_name="silent", min_size=1, connection_timeout=0.3)
        pool = cls(config, url)
        with pytest.raises(PoolSetupError) as caught:
            await pool.initialize()
        await pool.close()
        message = str(caught.value)
        assert message.startswith("Failed to setup pool 'silent'"), message
        assert f"127.0.0.1:{silent_port}" in message, message  # the target, masked
        assert "***" in message and PASSWORD not in message, message
        assert "within 0.3s" in message, message  # what happened
        assert "check the host and port" in message, message  # what to change
        assert not message.rstrip().endswith(":"), message


async def test_a_refused_port_names_the_target_too() -> None:
    port = free_port()
    for cls, url in pools(port):
        config = ConnectionPoolConfig(pool_name="refused", min_size=1, connection_timeout=0.5)
        pool = cls(config, url)
        with pytest.raises(PoolSetupError) as caught:
            await pool.initialize()
        await pool.close()
        message = str(caught.value)
        assert f"127.0.0.1:{port}" in message and PASSWORD not in message, message
        assert len(message.split(":", 1)[1].strip()) > 20, message
