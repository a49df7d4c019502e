"""The pool manager against real PostgreSQL, Redis and a local HTTP upstream."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from resync.core.exceptions import (
    ManagerError,
    ManagerStartError,
    PoolNotFoundError,
    PoolSetupError,
    RedisPoolNotInitializedError,
    TWSConnectionError,
)
from resync.core.pools import pool_manager
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.manager.health import HealthState
from resync.core.pools.pool_manager import (
    ConnectionPoolManager,
    get_connection_pool_manager,
    reset_connection_pool_manager,
)
from resync.settings import Settings
from resync.testing import InMemoryPool
from tests.helpers.net import free_port
from tests.helpers.redis_server import RedisServer
from tests.helpers.upstream import Upstream

SECRET = "Sentinel-Pw-9911"


def make_settings(**values: Any) -> Settings:
    values.setdefault("DB_POOL_MIN_SIZE", 1)
    values.setdefault("DB_POOL_MAX_SIZE", 5)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def resync_backends(pattern: str = "resync-database-%") -> int:
    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1", pattern
            )
        )
    finally:
        await conn.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture
async def clean_singleton() -> AsyncIterator[None]:
    await reset_connection_pool_manager()
    yield
    await reset_connection_pool_manager()


class FlakyPool(InMemoryPool):
    """An in-memory pool whose health probe can be made to fail or hang."""

    def __init__(self, name: str, *, timeout: float = 1.0, interval: float = 0.0) -> None:
        super().__init__(
            ConnectionPoolConfig(
                pool_name=name,
                min_size=0,
                max_size=2,
                connection_timeout=timeout,
                health_check_interval=interval,
            )
        )
        self.failing = False
        self.hanging = False

    async def _ping(self, connection: Any) -> None:
        if self.hanging:
            await asyncio.sleep(3600)
        if self.failing:
            raise ConnectionError("backend is down")


# --- building pools from settings ---------------------------------------------------


async def test_default_settings_build_only_the_embedded_sqlite_database_pool() -> None:
    async with ConnectionPoolManager(make_settings()) as manager:
        assert list(manager.pools) == ["database"]
        pool = await manager.get_pool("database")
        assert pool is not None
        async with pool.get_connection() as session:
            assert (await session.execute(text("SELECT 1"))).scalar() == 1


async def test_redis_and_http_pools_are_built_when_their_urls_are_set(
    pg_url: str, redis_url: str, upstream: Upstream
) -> None:
    settings = make_settings(DATABASE_URL=pg_url, REDIS_URL=redis_url, TWS_BASE_URL=upstream.url)
    async with ConnectionPoolManager(settings) as manager:
        assert set(manager.pools) == {"database", "redis", "tws_http"}
        redis_pool = manager.pool("redis")
        async with redis_pool.get_connection() as client:
            await client.set("resync:manager:key", "v")
            assert await client.get("resync:manager:key") in ("v", b"v")
            await client.delete("resync:manager:key")
        async with manager.pool("tws_http").get_connection() as http:
            assert (await http.get("/ok")).status_code == 200


async def test_redis_pool_is_off_when_its_min_size_is_zero(redis_url: str) -> None:
    settings = make_settings(REDIS_URL=redis_url, REDIS_POOL_MIN_SIZE=0)
    async with ConnectionPoolManager(settings) as manager:
        assert "redis" not in manager.pools


async def test_settings_are_read_at_start_from_the_module_name(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setattr(pool_manager, "settings", make_settings(REDIS_URL=redis_url))
    manager = ConnectionPoolManager()
    await manager.initialize()
    try:
        assert set(manager.pools) == {"database", "redis"}
    finally:
        await manager.close_all()


async def test_a_partial_settings_stand_in_still_builds_pools(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Partial:
        DATABASE_URL = "sqlite+aiosqlite:///:memory:"
        DB_POOL_MIN_SIZE = 1
        DB_POOL_MAX_SIZE = 3
        REDIS_POOL_MIN_SIZE = 0
        HTTP_POOL_MIN_SIZE = 0

    monkeypatch.setattr(pool_manager, "settings", Partial())
    async with ConnectionPoolManager() as manager:
        assert list(manager.pools) == ["database"]
        assert manager.pool("database").config.max_size in (1, 3)  # SQLite memory grants one


# --- registry ---------------------------------------------------------------------


async def test_custom_pools_can_be_registered_before_and_after_start() -> None:
    manager = ConnectionPoolManager(make_settings())
    before = FlakyPool("before")
    await manager.register("before", before)
    await manager.initialize()
    assert before.is_ready
    after = FlakyPool("after")
    await manager.register("after", after, required=True)
    assert after.is_ready
    assert set(manager.pools) == {"database", "before", "after"}
    assert manager.readiness()["pools"]["after"]["required"] is True
    await manager.close_all()
    assert not before.is_ready and not after.is_ready


async def test_duplicate_names_are_refused() -> None:
    async with ConnectionPoolManager(make_settings()) as manager:
        with pytest.raises(ManagerError, match="already registered"):
            await manager.register("database", FlakyPool("database"))


async def test_unknown_pool_is_none_or_a_clear_error() -> None:
    async with ConnectionPoolManager(make_settings()) as manager:
        assert await manager.get_pool("nope") is None
        with pytest.raises(PoolNotFoundError, match="no pool named 'nope'; configured pools: "):
            manager.pool("nope")


async def test_get_pool_before_start_returns_none() -> None:
    manager = ConnectionPoolManager(make_settings())
    assert await manager.get_pool("database") is None
    assert manager.get_pool_stats() == {}
    assert await manager.health_check_all() == {}


# --- all-or-nothing start ------------------------------------------------------------


async def test_failing_second_pool_closes_the_first_and_leaves_no_server_connection(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Any] = []
    original_build = pool_manager.build_pools

    def recording_build(source: object) -> Any:
        pools = original_build(source)
        built.extend(pool for _, pool in pools)
        return pools

    monkeypatch.setattr(pool_manager, "build_pools", recording_build)
    dead_redis = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    settings = make_settings(
        DATABASE_URL=pg_url, DB_POOL_MIN_SIZE=3, REDIS_URL=dead_redis, REDIS_REQUIRED=True
    )
    manager = ConnectionPoolManager(settings)
    with pytest.raises(ManagerStartError) as info:
        await manager.initialize()
    message = str(info.value)
    assert "pool 'redis'" in message
    assert SECRET not in message
    assert isinstance(info.value, TWSConnectionError)  # the seed's failure type
    assert set(info.value.failures) == {"redis"}
    assert manager.pools == {}
    assert manager._health_check_tasks == set()
    database = next(pool for pool in built if pool.backend == "database")
    assert database.stats.connection_creations >= 3  # it did open before the failure
    assert await resync_backends(database.application_name) == 0


async def test_a_failing_custom_pool_aborts_the_start_too() -> None:
    manager = ConnectionPoolManager(make_settings())
    broken = FlakyPool("broken")
    broken.fail_setup = OSError("refused")
    await manager.register("broken", broken, required=True)
    with pytest.raises(ManagerStartError, match="pool 'broken'") as info:
        await manager.initialize()
    assert isinstance(info.value.__cause__, PoolSetupError)
    assert not manager._initialized


@pytest.mark.redis
async def test_an_optional_redis_down_at_start_opens_in_the_background(tmp_path: Path) -> None:
    """REDIS_REQUIRED=false: the start succeeds, Redis is 'down', then opens by itself."""
    server = RedisServer(tmp_path)  # not started yet: its port refuses
    manager = ConnectionPoolManager(
        make_settings(REDIS_URL=server.url(), REDIS_POOL_HEALTH_CHECK_INTERVAL=0.2)
    )
    await manager.initialize()
    try:
        assert manager.readiness()["ready"] is True  # optional: not blocking
        health = manager.health["redis"]
        assert health.state is HealthState.DOWN and health.last_error
        with pytest.raises(RedisPoolNotInitializedError, match="'redis'"):
            async with manager.pool("redis").get_connection():
                pass
        server.start()
        deadline = time.monotonic() + 15
        while manager.health["redis"].state is not HealthState.HEALTHY:
            assert time.monotonic() < deadline, manager.health["redis"].as_dict()
            await asyncio.sleep(0.05)
        async with manager.pool("redis").get_connection() as client:
            assert await client.ping()
        assert manager.get_pool_stats()["redis"]["health"]["state"] == "healthy"
    finally:
        await manager.close_all()
        server.stop()


async def test_a_required_custom_pool_fails_the_start_an_optional_one_does_not() -> None:
    manager = ConnectionPoolManager(make_settings())
    broken = FlakyPool("broken")
    broken.fail_setup = OSError("refused")
    await manager.register("broken", broken)  # required=False is the default
    await manager.initialize()
    try:
        assert manager.health["broken"].state is HealthState.DOWN
        broken.fail_setup = None  # the server "comes back"
        deadline = time.monotonic() + 10
        while not broken.is_ready:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await manager.close_all()
    assert broken.state.value == "closed"  # the background opener did not outlive close_all


# --- singleton ---------------------------------------------------------------------


@pytest.mark.usefixtures("clean_singleton")
async def test_100_concurrent_callers_get_one_manager_and_one_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_manager, "settings", make_settings())
    starts = 0
    original = ConnectionPoolManager._start

    async def counting_start(self: ConnectionPoolManager) -> None:
        nonlocal starts
        starts += 1
        await asyncio.sleep(0.05)  # widen the race window
        await original(self)

    monkeypatch.setattr(ConnectionPoolManager, "_start", counting_start)
    managers = await asyncio.gather(*(get_connection_pool_manager() for _ in range(100)))
    assert len({id(m) for m in managers}) == 1
    assert starts == 1
    assert managers[0]._initialized


@pytest.mark.postgres
@pytest.mark.usefixtures("clean_singleton")
async def test_a_reset_racing_a_start_closes_every_manager_handed_out(
    monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    """Issue 15.1: get, yield once, reset, then await the get -- 50 times, interleaved."""
    settings = make_settings(DATABASE_URL=pg_url, DB_POOL_MIN_SIZE=2)
    monkeypatch.setattr(pool_manager, "settings", settings)
    handed_out: list[ConnectionPoolManager] = []

    async def get() -> None:
        handed_out.append(await get_connection_pool_manager())

    async def one_round() -> None:
        getting = asyncio.ensure_future(get())
        await asyncio.sleep(0)
        await reset_connection_pool_manager()
        await getting

    await asyncio.gather(*(one_round() for _ in range(50)))
    await reset_connection_pool_manager()
    still_open = [m for m in handed_out if m.is_open]
    assert still_open == [], f"{len(still_open)} of {len(handed_out)} managers left open"
    names = {m.pools["database"].application_name for m in handed_out}  # type: ignore[attr-defined]
    for application_name in names:
        assert await resync_backends(application_name) == 0


async def test_close_all_during_the_start_closes_what_the_start_opened() -> None:
    manager = ConnectionPoolManager(make_settings())
    starting = asyncio.ensure_future(manager.initialize())
    await asyncio.sleep(0)
    await manager.close_all()
    with pytest.raises(ManagerError, match="shut"):
        await starting
    assert not manager.is_open
    assert all(pool.state.value == "closed" for pool in manager.pools.values())


@pytest.mark.usefixtures("clean_singleton")
async def test_reset_closes_and_forgets_the_singleton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_manager, "settings", make_settings())
    first = await get_connection_pool_manager()
    await reset_connection_pool_manager()
    assert first._shutdown
    second = await get_connection_pool_manager()
    assert second is not first and second._initialized


def test_a_manager_used_from_another_event_loop_fails_fast() -> None:
    manager = ConnectionPoolManager(make_settings())
    owner = asyncio.new_event_loop()
    try:
        owner.run_until_complete(manager.initialize())

        async def use_elsewhere() -> None:
            with pytest.raises(ManagerError, match="different event loop"):
                await manager.get_pool("database")
            with pytest.raises(ManagerError, match="different event loop"):
                await manager.health_check_all()

        asyncio.run(use_elsewhere())
        assert manager._initialized  # the misuse did not break it for its own loop
    finally:
        owner.run_until_complete(manager.close_all())
        owner.close()


# --- health ------------------------------------------------------------------------


async def test_background_checks_move_a_pool_through_degraded_to_down_and_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="resync.manager")
    manager = ConnectionPoolManager(make_settings())
    flaky = FlakyPool("flaky", timeout=0.5, interval=0.02)
    await manager.register("flaky", flaky)
    async with manager:
        assert manager.health["flaky"].state == "healthy"
        flaky.failing = True
        await _wait_for(lambda: manager.health["flaky"].state == "down")
        states = [s for _, s in manager.health["flaky"].changes]
        assert states[:2] == ["degraded", "down"]
        assert "backend is down" in (manager.health["flaky"].last_error or "")
        flaky.failing = False
        await _wait_for(lambda: manager.health["flaky"].state == "healthy")
    messages = [r.getMessage() for r in caplog.records if "'flaky' is" in r.getMessage()]
    # One log line per change, not one per tick.
    assert messages == [
        "pool 'flaky' is degraded (was healthy): ConnectionError: backend is down",
        "pool 'flaky' is down (was degraded): ConnectionError: backend is down",
        "pool 'flaky' is healthy (was down)",
    ]


async def test_a_hanging_check_does_not_block_the_other_pools() -> None:
    manager = ConnectionPoolManager(make_settings())
    stuck = FlakyPool("stuck", timeout=0.3)
    await manager.register("stuck", stuck)
    async with manager:
        stuck.hanging = True
        started = time.monotonic()
        results = await manager.health_check_all()
        elapsed = time.monotonic() - started
        assert results == {"database": True, "stuck": False}
        assert elapsed < 2.0  # bounded by the stuck pool's own timeout, not forever
        assert manager.health["stuck"].last_error == "no answer within 0.3s"


async def test_readiness_needs_required_pools_healthy_and_tolerates_optional_ones() -> None:
    manager = ConnectionPoolManager(make_settings())
    optional = FlakyPool("optional")
    required = FlakyPool("required")
    await manager.register("optional", optional)
    await manager.register("required", required, required=True)
    async with manager:
        assert manager.readiness()["ready"] is True
        optional.failing = True
        await manager.health_check_all()
        report = manager.readiness()
        assert report["ready"] is True
        assert report["pools"]["optional"]["state"] == "degraded"
        required.failing = True
        await manager.health_check_all()
        report = manager.readiness()
        assert report["ready"] is False
        assert report["not_ready"] == ["required"]
    assert manager.readiness()["ready"] is False  # closed


async def test_failed_checks_feed_the_pool_circuit_breaker() -> None:
    from resync.core.resilience import CircuitBreaker, CircuitBreakerConfig

    manager = ConnectionPoolManager(make_settings())
    flaky = FlakyPool("flaky")
    flaky.circuit_breaker = CircuitBreaker("flaky", CircuitBreakerConfig(failure_threshold=2))
    await manager.register("flaky", flaky)
    async with manager:
        flaky.failing = True
        await manager.health_check_all()
        await manager.health_check_all()
        assert flaky.circuit_breaker.state == "open"
        await manager.health_check_all()
        assert manager.health["flaky"].state == "down"


async def test_stats_cover_every_pool_with_one_schema(redis_url: str) -> None:
    async with ConnectionPoolManager(make_settings(REDIS_URL=redis_url)) as manager:
        all_stats = manager.get_pool_stats()
        assert set(all_stats) == {"database", "redis"}
        keys = {name: set(s) for name, s in all_stats.items()}
        assert keys["database"] == keys["redis"]
        assert all_stats["redis"]["health"]["state"] == "healthy"


# --- shutdown ----------------------------------------------------------------------


async def test_close_all_lets_50_active_leases_finish_within_the_drain_timeout(
    pg_url: str,
) -> None:
    settings = make_settings(DATABASE_URL=pg_url, DB_POOL_MIN_SIZE=1, DB_POOL_MAX_SIZE=50)
    manager = ConnectionPoolManager(settings)
    await manager.initialize()
    pool = manager.pool("database")
    started = asyncio.Event()
    begun = 0

    async def work() -> int:
        nonlocal begun
        async with pool.get_connection() as session:
            begun += 1
            if begun == 50:
                started.set()
            await session.execute(text("SELECT pg_sleep(0.3)"))
            return int((await session.execute(text("SELECT 7"))).scalar_one())

    tasks = [asyncio.create_task(work()) for _ in range(50)]
    await asyncio.wait_for(started.wait(), 30)
    assert await resync_backends(pool.application_name) >= 50  # type: ignore[attr-defined]
    abandoned = await manager.close_all(drain_timeout=20)
    assert abandoned == {"database": 0}
    assert await asyncio.gather(*tasks) == [7] * 50
    assert await resync_backends(pool.application_name) == 0  # type: ignore[attr-defined]


async def test_close_all_is_idempotent_and_concurrent() -> None:
    manager = ConnectionPoolManager(make_settings())
    await manager.initialize()
    results = await asyncio.gather(*(manager.close_all() for _ in range(5)))
    assert all(r == results[0] for r in results)
    assert await manager.close_all() == results[0]
    assert manager._health_check_tasks == set()
    with pytest.raises(ManagerError, match="shutdown"):
        await manager.initialize()


async def test_close_all_reports_leases_still_open_at_the_deadline() -> None:
    manager = ConnectionPoolManager(make_settings())
    slow = FlakyPool("slow")
    await manager.register("slow", slow)
    await manager.initialize()
    release = asyncio.Event()

    async def hold() -> None:
        async with slow.get_connection():
            await release.wait()

    task = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    abandoned = await manager.close_all(drain_timeout=0.05)
    assert abandoned["slow"] == 1
    release.set()
    await task


async def test_budget_check_warns_when_replicas_times_max_size_exceed_the_server(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resync.manager")
    settings = make_settings(DATABASE_URL=pg_url, DB_POOL_MAX_SIZE=50, WORKERS=4, REPLICAS=25)
    async with ConnectionPoolManager(settings) as manager:
        line = next(b for b in manager.budget if b.pool == "database")
        assert line.total == 5000
        assert line.server_limit is not None and line.over
    assert any("connection budget of pool 'database' is over" in r.message for r in caplog.records)


async def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
