"""RedisConnectionPool against real Redis servers.

The shared server (127.0.0.1:6379, database 15) carries the ordinary tests;
every key starts with a per-test prefix and is deleted afterwards. Tests that
need a password, TLS, DEBUG SLEEP or a restart start their own throwaway
``redis-server`` (tests/helpers/redis_server.py): the shared server's
configuration is never changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, ResponseError

from resync.core.exceptions import (
    DatabaseError,
    PoolConfigError,
    RedisPoolClosedError,
    RedisPoolError,
    RedisPoolNotInitializedError,
    RedisPoolTimeoutError,
    RedisSetupError,
    RedisUnavailableError,
)
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.redis_pool import RedisConnectionPool
from resync.core.resilience import BACKEND_BREAKER_DEFAULTS, CircuitBreakerConfig
from tests.helpers.net import free_port
from tests.helpers.redis_server import RedisServer, make_self_signed_cert

pytestmark = pytest.mark.redis


def make_config(**overrides: Any) -> ConnectionPoolConfig:
    values: dict[str, Any] = {
        "pool_name": "redis-test",
        "min_size": 1,
        "max_size": 5,
        "connection_timeout": 2.0,
        "idle_timeout": 60.0,
        "max_lifetime": 0.0,
    }
    values.update(overrides)
    return ConnectionPoolConfig(**values)


@pytest.fixture
def client_name() -> str:
    """A CLIENT SETNAME unique to the test, to count its connections on the server."""
    return f"resync-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A bare redis-py client on the shared test database, for checks and cleanup."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def prefix(admin: aioredis.Redis) -> AsyncIterator[str]:
    """A key prefix unique to the test; its keys are deleted afterwards."""
    value = f"resync:test:{uuid.uuid4().hex[:10]}:"
    yield value
    keys = [key async for key in admin.scan_iter(match=f"{value}*")]
    if keys:
        await admin.delete(*keys)


@pytest.fixture
def throwaway(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server this test may stop, restart or reconfigure."""
    with RedisServer(tmp_path) as server:
        yield server


async def server_connections(admin: aioredis.Redis, name: str) -> int:
    clients = await admin.client_list()
    return sum(1 for c in clients if c.get("name") == name)


@contextlib.asynccontextmanager
async def opened(pool: RedisConnectionPool) -> AsyncIterator[RedisConnectionPool]:
    await pool.initialize()
    try:
        yield pool
    finally:
        await pool.close()


# --- construction ------------------------------------------------------------------


@pytest.mark.parametrize("url", ["", "   "])
def test_empty_url_is_rejected_as_value_error(url: str) -> None:
    with pytest.raises(PoolConfigError, match="redis_url cannot be empty") as info:
        RedisConnectionPool(make_config(), url)
    assert isinstance(info.value, ValueError)


def test_non_redis_url_is_rejected_without_showing_its_password() -> None:
    with pytest.raises(ValueError, match="redis://") as info:
        RedisConnectionPool(make_config(), "http://user:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in str(info.value)


def test_sizes_cannot_be_overridden_through_client_options() -> None:
    with pytest.raises(PoolConfigError, match="max_connections"):
        RedisConnectionPool(make_config(), "redis://127.0.0.1:6379/15", max_connections=3)


async def test_lease_before_initialize_is_refused(redis_url: str) -> None:
    pool = RedisConnectionPool(make_config(), redis_url)
    with pytest.raises(RedisPoolNotInitializedError):
        async with pool.get_connection():
            pass


async def test_initialize_fails_with_setup_error_when_nothing_listens() -> None:
    pool = RedisConnectionPool(
        make_config(connection_timeout=1.0), f"redis://127.0.0.1:{free_port()}/0"
    )
    started = time.monotonic()
    with pytest.raises(RedisSetupError, match="Failed to setup pool 'redis-test'") as info:
        await pool.initialize()
    assert isinstance(info.value, DatabaseError)
    assert time.monotonic() - started < 5
    await pool.close()


# --- leasing -------------------------------------------------------------------------


async def test_initialize_opens_and_pings_min_size_connections(
    redis_url: str, admin: aioredis.Redis, client_name: str
) -> None:
    pool = RedisConnectionPool(make_config(min_size=3), redis_url, client_name=client_name)
    async with opened(pool):
        assert await server_connections(admin, client_name) == 3
        stats = pool.get_stats_snapshot()
        assert stats["connection_creations"] == 3
        assert stats["idle_connections"] == 3
        assert stats["backend"] == "redis"
    assert await server_connections(admin, client_name) == 0


async def test_lease_yields_a_redis_client_bound_to_one_connection(
    redis_url: str, prefix: str
) -> None:
    async with (
        opened(RedisConnectionPool(make_config(), redis_url)) as pool,
        pool.get_connection() as client,
    ):
        assert isinstance(client, aioredis.Redis)
        await client.set(f"{prefix}k", "v")
        assert await client.get(f"{prefix}k") == "v"  # decode_responses by default
        first = await client.client_id()
        async with client.pipeline(transaction=True) as pipe:
            pipe.client_id()
            pipe.incr(f"{prefix}n")
            in_pipeline, counter = await pipe.execute()
        assert await client.client_id() == first == in_pipeline
        assert counter == 1


async def test_concurrent_commands_on_one_lease_take_turns(redis_url: str, prefix: str) -> None:
    async with (
        opened(RedisConnectionPool(make_config(max_size=1), redis_url)) as pool,
        pool.get_connection() as client,
    ):
        results = await asyncio.gather(*(client.incr(f"{prefix}n") for _ in range(50)))
    assert sorted(results) == list(range(1, 51))


async def test_pubsub_and_transactions_run_on_the_leased_connection(
    redis_url: str, admin: aioredis.Redis, prefix: str
) -> None:
    async with opened(RedisConnectionPool(make_config(max_size=1), redis_url)) as pool:
        async with pool.get_connection() as client:
            pubsub = client.pubsub()
            await pubsub.subscribe(f"{prefix}ch")
            assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
            await admin.publish(f"{prefix}ch", "hello")
            message = await pubsub.get_message(timeout=2)
            assert message is not None and message["data"] == "hello"
            await pubsub.aclose()

        async def bump(pipe: Any) -> None:
            value = int(await pipe.get(f"{prefix}n") or 0)
            pipe.multi()
            pipe.set(f"{prefix}n", value + 1)

        async with pool.get_connection() as client:
            await client.transaction(bump, f"{prefix}n")
            assert await client.get(f"{prefix}n") == "1"


async def test_client_used_after_its_lease_is_refused(redis_url: str) -> None:
    async with opened(RedisConnectionPool(make_config(), redis_url)) as pool:
        async with pool.get_connection() as client:
            await client.ping()
        with pytest.raises(RuntimeError, match=r"lease .* has ended"):
            await client.ping()


async def test_max_size_is_respected_under_1000_concurrent_leases(
    redis_url: str, admin: aioredis.Redis, client_name: str, prefix: str
) -> None:
    pool = RedisConnectionPool(
        make_config(max_size=10, connection_timeout=30.0), redis_url, client_name=client_name
    )
    holding = peak = 0
    connections_seen = 0

    async def worker() -> None:
        nonlocal holding, peak, connections_seen
        async with pool.get_connection() as client:
            holding += 1
            peak = max(peak, holding)
            await client.incr(f"{prefix}n")
            connections_seen = max(connections_seen, await server_connections(admin, client_name))
            holding -= 1

    async with opened(pool):
        await asyncio.gather(*(worker() for _ in range(1000)))
        stats = pool.get_stats_snapshot()
    assert await admin.get(f"{prefix}n") == "1000"
    assert peak <= 10
    assert connections_seen <= 10
    assert stats["peak_active"] <= 10
    assert stats["connection_creations"] <= 10
    assert stats["pool_hits"] == 1000
    assert stats["connection_errors"] == 0


async def test_waiting_past_connection_timeout_raises_typed_timeout(redis_url: str) -> None:
    async with opened(
        RedisConnectionPool(make_config(max_size=1, connection_timeout=0.3), redis_url)
    ) as pool:
        async with pool.get_connection():
            started = time.monotonic()
            with pytest.raises(RedisPoolTimeoutError) as info:
                async with pool.get_connection():
                    pass
            waited = time.monotonic() - started
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, DatabaseError)
        assert str(info.value).startswith("Timeout acquiring connection from pool 'redis-test'")
        assert 0.2 < waited < 3
        assert pool.get_stats_snapshot()["pool_exhaustions"] == 1


@pytest.mark.parametrize(
    "driver_error",
    [RedisConnectionError("No connection available."), MaxConnectionsError("Too many connections")],
)
def test_no_connection_available_inside_redis_py_becomes_pool_timeout(
    driver_error: Exception,
) -> None:
    pool = RedisConnectionPool(make_config(), "redis://127.0.0.1:6379/15")
    mapped = pool._map_error(driver_error)
    assert isinstance(mapped, RedisPoolTimeoutError)
    assert str(mapped).startswith("Timeout acquiring connection from pool 'redis-test'")
    assert not pool._is_backend_failure(driver_error)


async def test_redis_errors_come_out_in_the_redis_family_and_keep_the_connection(
    redis_url: str, prefix: str
) -> None:
    async with opened(RedisConnectionPool(make_config(max_size=1), redis_url)) as pool:
        with pytest.raises(RedisPoolError, match="Redis operation failed") as info:
            async with pool.get_connection() as client:
                await client.set(f"{prefix}s", "text")
                await client.lpush(f"{prefix}s", "x")  # WRONGTYPE
        assert isinstance(info.value, DatabaseError)
        assert isinstance(info.value.__cause__, ResponseError)
        # A reply error is a complete exchange: the connection is kept.
        assert pool.get_stats_snapshot()["connection_closures"] == 0


async def test_application_errors_pass_through_unchanged(redis_url: str) -> None:
    async with opened(RedisConnectionPool(make_config(max_size=1), redis_url)) as pool:
        async with pool.get_connection() as client:
            before = await client.client_id()
        with pytest.raises(KeyError):
            async with pool.get_connection() as client:
                raise KeyError("not found")
        async with pool.get_connection() as client:
            assert await client.client_id() == before


# --- cancellation: no reply for the next user ---------------------------------------------


async def test_command_cancelled_in_flight_never_hands_its_reply_to_the_next_lease(
    throwaway: RedisServer,
) -> None:
    pool = RedisConnectionPool(make_config(max_size=1), throwaway.url())
    async with opened(pool):

        async def slow_command() -> None:
            async with pool.get_connection() as client:
                await client.set("k", "mine")
                await client.execute_command("DEBUG", "SLEEP", "0.5")

        task = asyncio.create_task(slow_command())
        await asyncio.sleep(0.15)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.6)  # the DEBUG SLEEP reply ("OK") is due by now
        async with pool.get_connection() as client:
            assert await client.get("k") == "mine"
            assert await client.echo("next") == "next"
        assert pool.get_stats_snapshot()["connection_closures"] == 1


async def test_timeout_caught_inside_the_lease_leaves_the_connection_usable(
    throwaway: RedisServer,
) -> None:
    pool = RedisConnectionPool(make_config(max_size=1), throwaway.url())
    async with opened(pool), pool.get_connection() as client:
        await client.set("k", "v")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await client.execute_command("DEBUG", "SLEEP", "0.4")
        await asyncio.sleep(0.5)
        assert await client.get("k") == "v"


async def test_lease_left_with_a_command_still_running_discards_the_connection(
    throwaway: RedisServer,
) -> None:
    pool = RedisConnectionPool(make_config(max_size=1), throwaway.url())
    async with opened(pool):
        async with pool.get_connection() as client:
            await client.set("k", "mine")
            orphan = asyncio.create_task(client.execute_command("DEBUG", "SLEEP", "0.3"))
            await asyncio.sleep(0.05)
        # The connection was closed under the orphan command instead of reused.
        with pytest.raises(RedisConnectionError):
            await orphan
        async with pool.get_connection() as client:
            assert await client.get("k") == "mine"
        assert pool.get_stats_snapshot()["connection_closures"] == 1


# --- idle timeout and lifetime ------------------------------------------------------------


async def test_idle_connections_above_min_size_are_closed_after_idle_timeout(
    redis_url: str, admin: aioredis.Redis, client_name: str
) -> None:
    pool = RedisConnectionPool(
        make_config(min_size=1, max_size=5, idle_timeout=0.2), redis_url, client_name=client_name
    )
    async with opened(pool):
        leases = [pool.get_connection() for _ in range(5)]
        clients = [await lease.__aenter__() for lease in leases]
        await asyncio.gather(*(c.ping() for c in clients))
        for lease in leases:
            await lease.__aexit__(None, None, None)
        assert await server_connections(admin, client_name) == 5
        deadline = time.monotonic() + 5
        while pool.get_stats_snapshot()["idle_connections"] > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert pool.get_stats_snapshot()["idle_connections"] == 1
        assert await server_connections(admin, client_name) == 1
        assert pool.get_stats_snapshot()["connection_closures"] == 4


async def test_connections_past_max_lifetime_are_replaced(
    redis_url: str, admin: aioredis.Redis, client_name: str
) -> None:
    pool = RedisConnectionPool(
        make_config(min_size=2, max_size=2, max_lifetime=0.3), redis_url, client_name=client_name
    )
    async with opened(pool):
        async with pool.get_connection() as a, pool.get_connection() as b:
            old_ids = {await a.client_id(), await b.client_id()}
        await asyncio.sleep(1.0)
        async with pool.get_connection() as a, pool.get_connection() as b:
            new_ids = {await a.client_id(), await b.client_id()}
        assert not old_ids & new_ids
        assert pool.get_stats_snapshot()["connection_creations"] >= 4
        assert await server_connections(admin, client_name) == 2


# --- health, restart, breaker ----------------------------------------------------------------


async def test_health_check_pings_and_never_raises(throwaway: RedisServer) -> None:
    pool = RedisConnectionPool(make_config(connection_timeout=0.5), throwaway.url())
    async with opened(pool):
        assert await pool.health_check() is True
        assert pool.get_stats_snapshot()["last_health_check"] is not None
        throwaway.stop()
        assert await pool.health_check() is False


async def test_leases_succeed_within_two_seconds_of_a_restarted_server_being_back(
    throwaway: RedisServer,
) -> None:
    pool = RedisConnectionPool(make_config(min_size=3, connection_timeout=1.0), throwaway.url())
    async with opened(pool):
        async with pool.get_connection() as client:
            await client.set("k", "before")
        throwaway.stop()
        with pytest.raises(RedisPoolError):
            async with pool.get_connection() as client:
                await client.get("k")
        throwaway.start()
        back = time.monotonic()
        recovered_after: float | None = None
        while time.monotonic() - back < 5:
            try:
                async with pool.get_connection() as client:
                    await client.set("k", "after")
                recovered_after = time.monotonic() - back
                break
            except RedisPoolError:
                await asyncio.sleep(0.05)
        assert recovered_after is not None and recovered_after < 2.0
        # Every pooled connection was dead; none of them may surface now.
        for _ in range(10):
            async with pool.get_connection() as client:
                assert await client.get("k") == "after"


async def test_circuit_breaker_is_on_by_default_and_fails_fast_while_open(
    throwaway: RedisServer,
) -> None:
    default = RedisConnectionPool(make_config(), throwaway.url()).circuit_breaker
    assert default is not None
    assert default.config == BACKEND_BREAKER_DEFAULTS["redis"]
    assert (
        RedisConnectionPool(make_config(), throwaway.url(), circuit_breaker=False).circuit_breaker
        is None
    )
    assert (
        RedisConnectionPool(make_config(), throwaway.url(), circuit_breaker=None).circuit_breaker
        is None
    )
    breaker = CircuitBreakerConfig(failure_threshold=2, recovery_timeout=0.5)
    pool = RedisConnectionPool(
        make_config(min_size=1, connection_timeout=0.5), throwaway.url(), circuit_breaker=breaker
    )
    async with opened(pool):
        throwaway.stop()
        for _ in range(2):
            with pytest.raises(RedisPoolError):
                async with pool.get_connection() as client:
                    await client.ping()
        started = time.perf_counter()
        with pytest.raises(RedisUnavailableError):
            async with pool.get_connection():
                pass
        assert time.perf_counter() - started < 0.05
        assert pool.get_stats_snapshot()["circuit_breaker"]["state"] == "open"
        throwaway.start()
        await asyncio.sleep(0.6)
        async with pool.get_connection() as client:
            assert await client.ping() is True
        assert pool.get_stats_snapshot()["circuit_breaker"]["state"] == "closed"


# --- security: passwords, ACL users, TLS --------------------------------------------------------


async def test_password_url_works_and_the_password_never_shows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-Pw-93817"
    caplog.set_level(logging.DEBUG)
    with RedisServer(tmp_path, password=secret) as server:
        pool = RedisConnectionPool(make_config(), server.url())
        async with opened(pool):
            async with pool.get_connection() as client:
                assert await client.ping() is True
                shown = [repr(pool), repr(client), repr(client.connection_pool), str(client)]
            shown += [repr(pool._connection_pool), str(pool.get_stats_snapshot())]
            shown.append(str(await pool.get_pool_info()))
            with pytest.raises(RedisPoolError) as info:
                async with pool.get_connection() as client:
                    await client.execute_command("NO-SUCH-COMMAND")
            shown.append(str(info.value))
        wrong = "wrong-Pw-55521"
        bad = RedisConnectionPool(make_config(), server.url(password=wrong))
        with pytest.raises(RedisSetupError) as setup_info:
            await bad.initialize()
        await bad.close()
        shown.append(str(setup_info.value))
    shown.append(caplog.text)
    for text in shown:
        assert secret not in text
        assert wrong not in text


async def test_acl_user_url_works(tmp_path: Path) -> None:
    with RedisServer(tmp_path, password="admin-pw") as server:
        admin = aioredis.Redis.from_url(server.url())
        try:
            await admin.acl_setuser(
                "app", enabled=True, passwords=["+app-pw"], keys=["*"], commands=["+@all"]
            )
        finally:
            await admin.aclose()
        pool = RedisConnectionPool(make_config(), server.url(user="app", password="app-pw"))
        async with opened(pool), pool.get_connection() as client:
            assert await client.acl_whoami() == "app"


async def test_rediss_url_speaks_tls(tmp_path: Path) -> None:
    tls = make_self_signed_cert(tmp_path)
    with RedisServer(tmp_path, password="tls-pw", tls=tls) as server:
        url = server.url()
        assert url.startswith("rediss://")
        pool = RedisConnectionPool(make_config(), url, ssl_ca_certs=str(tls.cert))
        async with opened(pool), pool.get_connection() as client:
            assert await client.ping() is True
            assert type(client.connection_pool._connection).__name__ == "SSLConnection"
        # Without trusting the certificate the handshake must fail.
        untrusted = RedisConnectionPool(make_config(connection_timeout=1.0), url)
        with pytest.raises(RedisSetupError):
            await untrusted.initialize()
        await untrusted.close()


# --- close ---------------------------------------------------------------------------


async def test_close_disconnects_everything_and_refuses_new_leases(
    redis_url: str, admin: aioredis.Redis, client_name: str
) -> None:
    pool = RedisConnectionPool(make_config(min_size=2), redis_url, client_name=client_name)
    await pool.initialize()
    assert await server_connections(admin, client_name) == 2
    await pool.close()
    await pool.close()
    assert await server_connections(admin, client_name) == 0
    with pytest.raises(RedisPoolClosedError, match="shutdown"):
        async with pool.get_connection():
            pass
