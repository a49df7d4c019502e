"""The FastAPI service in-process: endpoints, dependencies, error mapping, metrics."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from resync.api import DBSession, HTTPClient, RedisClient, create_app
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.settings import Settings
from resync.testing import InMemoryPool
from tests.helpers.upstream import Upstream

SECRET = "Sentinel-Pw-4471"


def make_settings(**values: Any) -> Settings:
    values.setdefault("DB_POOL_MIN_SIZE", 1)
    values.setdefault("DB_POOL_MAX_SIZE", 4)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://resync") as client:
            yield client


probe_router = APIRouter()


@probe_router.get("/test/redis")
async def uses_redis(client: RedisClient) -> dict[str, Any]:
    return {"pong": await client.ping()}


@probe_router.get("/test/upstream")
async def uses_upstream(client: HTTPClient) -> dict[str, int]:
    response = await client.get("/fail")
    return {"status": response.status_code}


@probe_router.get("/test/hold")
async def holds_db(session: DBSession) -> dict[str, int]:
    await session.execute(text("SELECT 1"))
    await asyncio.sleep(0.5)
    return {"held": 1}


@probe_router.post("/test/deferred/{table}")
async def fails_at_commit(table: str, session: DBSession) -> dict[str, str]:
    # Two equal keys under a DEFERRED unique constraint: only COMMIT fails.
    await session.execute(text(f"INSERT INTO {table} VALUES (1), (1)"))
    return {"status": "written"}


@pytest.fixture
async def sqlite_client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(), include_examples=True)
    app.include_router(probe_router)
    async for client in client_for(app):
        yield client


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


# --- operational endpoints ------------------------------------------------------------


async def test_liveness_answers_without_io(sqlite_client: httpx.AsyncClient) -> None:
    response = await sqlite_client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


async def test_readiness_is_200_with_every_required_pool_healthy(
    sqlite_client: httpx.AsyncClient,
) -> None:
    response = await sqlite_client.get("/health/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert body["pools"]["database"]["state"] == "healthy"


async def test_readiness_answers_at_once_even_when_a_backend_hangs() -> None:
    app = create_app(make_settings(), include_examples=True)
    hanging = _HangingPool()
    async with LifespanManager(app) as lifespan:
        manager = app.state.resync_manager
        await manager.register("stuck", hanging, required=True)
        hanging.hang = True
        checks = asyncio.create_task(manager.health_check_all())  # stuck for its timeout
        transport = httpx.ASGITransport(app=lifespan.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://resync") as client:
            started = time.monotonic()
            response = await client.get("/health/ready")
            elapsed = time.monotonic() - started
        assert response.status_code == 200  # the last completed check said healthy
        assert elapsed < 1.0  # generous: it reads state, it does not wait for the check
        await checks
        async with httpx.AsyncClient(transport=transport, base_url="http://resync") as client:
            response = await client.get("/health/ready")
        assert response.status_code == 503
        assert response.json()["not_ready"] == ["stuck"]
        assert response.headers["retry-after"] == "5"


async def test_metrics_is_served_at_exactly_slash_metrics_and_parses(
    sqlite_client: httpx.AsyncClient,
) -> None:
    await sqlite_client.put("/api/kv/m1", json={"value": "x"})
    response = await sqlite_client.get("/metrics")
    assert response.status_code == 200  # not a 307 to /metrics/
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    expected = {
        "db_client_connection_count",
        "db_client_connection_max",
        "db_client_connection_idle_min",
        "db_client_connection_pending_requests",
        "db_client_connection_timeouts",
        "db_client_connection_wait_time_seconds",
        "db_client_connection_use_time_seconds",
        "resync_pool_leases",
        "resync_pool_errors",
        "resync_pool_connection_creations",
        "resync_pool_connection_closures",
        "resync_pool_health_state",
        "resync_pool_up",
    }
    assert expected <= set(families)
    count = {
        s.labels["state"]: s.value
        for s in families["db_client_connection_count"].samples
        if s.labels["pool"] == "database"
    }
    assert set(count) == {"idle", "used"}
    leases = families["resync_pool_leases"].samples[0]
    assert leases.labels == {
        "pool": "database",
        "backend": "database",
        "db_client_connection_pool_name": "database",
    }
    assert leases.value >= 1
    health = {s.labels["state"]: s.value for s in families["resync_pool_health_state"].samples}
    assert health == {"healthy": 1.0, "degraded": 0.0, "down": 0.0}


async def test_pools_endpoint_shows_one_schema_and_no_secret(pg_url: str, redis_url: str) -> None:
    secret_pg = pg_url.replace("postgres@", f"postgres:{SECRET}@")  # trust auth ignores it
    secret_redis = redis_url.replace("redis://", f"redis://default:{SECRET}@")
    app = create_app(
        make_settings(DATABASE_URL=secret_pg, REDIS_URL=secret_redis), include_examples=True
    )
    async for client in client_for(app):
        response = await client.get("/pools")
        assert response.status_code == 200
        pools = response.json()["pools"]
        assert set(pools) == {"database", "redis"}
        assert set(pools["database"]) == set(pools["redis"])
        assert "pool_hits" in pools["database"]
        assert SECRET not in response.text
        assert SECRET not in (await client.get("/metrics")).text
        assert SECRET not in (await client.get("/health/ready")).text


# --- the example key-value router -------------------------------------------------------


async def test_kv_put_then_get_round_trips_through_the_database(
    sqlite_client: httpx.AsyncClient,
) -> None:
    put = await sqlite_client.put("/api/kv/greeting", json={"value": "hello"})
    assert put.status_code == 200
    got = await sqlite_client.get("/api/kv/greeting")
    assert got.json() == {"key": "greeting", "value": "hello", "source": "database"}
    await sqlite_client.put("/api/kv/greeting", json={"value": "again"})
    assert (await sqlite_client.get("/api/kv/greeting")).json()["value"] == "again"


async def test_kv_missing_key_is_404_and_bad_key_is_422(sqlite_client: httpx.AsyncClient) -> None:
    assert (await sqlite_client.get("/api/kv/never-written")).status_code == 404
    assert (await sqlite_client.get("/api/kv/bad key!")).status_code == 422


async def test_kv_uses_redis_as_read_through_cache_and_invalidates_on_write(
    pg_url: str, redis_url: str
) -> None:
    key = f"cache-{uuid.uuid4().hex[:8]}"
    app = create_app(make_settings(DATABASE_URL=pg_url, REDIS_URL=redis_url), include_examples=True)
    async for client in client_for(app):
        await client.put(f"/api/kv/{key}", json={"value": "v1"})
        assert (await client.get(f"/api/kv/{key}")).json()["source"] == "database"
        assert (await client.get(f"/api/kv/{key}")).json() == {
            "key": key,
            "value": "v1",
            "source": "cache",
        }
        await client.put(f"/api/kv/{key}", json={"value": "v2"})
        after = (await client.get(f"/api/kv/{key}")).json()
        assert after == {"key": key, "value": "v2", "source": "database"}
        manager = app.state.resync_manager
        async with manager.pool("redis").get_connection() as redis:
            await redis.delete(f"resync:kv:{key}")
        async with manager.pool("database").get_connection() as session:
            await session.execute(text("DELETE FROM resync_kv WHERE key = :k"), {"k": key})


# --- dependencies and error mapping ------------------------------------------------------


async def test_a_pool_that_is_not_configured_answers_503_with_a_clear_error(
    sqlite_client: httpx.AsyncClient,
) -> None:
    response = await sqlite_client.get("/test/redis")
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "pool_not_configured"
    assert "set REDIS_URL" in body["detail"]


async def test_redis_dependency_leases_a_client(redis_url: str) -> None:
    app = create_app(make_settings(REDIS_URL=redis_url), include_examples=True)
    app.include_router(probe_router)
    async for client in client_for(app):
        assert (await client.get("/test/redis")).json() == {"pong": True}


async def test_pool_timeout_answers_503_with_retry_after() -> None:
    app = create_app(make_settings(DB_POOL_CONNECT_TIMEOUT=0.2), include_examples=True)
    app.include_router(probe_router)
    async for client in client_for(app):
        # SQLite memory grants one lease at a time: hold it, the next one times out.
        holder = asyncio.create_task(client.get("/test/hold"))
        await asyncio.sleep(0.1)
        response = await client.get("/api/kv/anything")
        assert response.status_code == 503
        assert response.json()["error"] == "pool_timeout"
        assert response.headers["retry-after"] == "1"
        body = response.json()
        # The body is the contract's fixed sentence; the log has the full story.
        assert body["detail"] == "pool 'database' is busy: no connection in time"
        assert body["pool"] == "database" and body["request_id"]
        assert response.headers["x-request-id"] == body["request_id"]
        assert (await holder).status_code == 200


async def test_overloaded_pool_answers_503_at_once() -> None:
    app = create_app(
        make_settings(DB_POOL_CONNECT_TIMEOUT=5, DB_POOL_MAX_WAITING=1), include_examples=True
    )
    app.include_router(probe_router)
    async for client in client_for(app):
        holder = asyncio.create_task(client.get("/test/hold"))
        await asyncio.sleep(0.1)
        queued = asyncio.create_task(client.get("/api/kv/queued"))
        await asyncio.sleep(0.05)
        response = await client.get("/api/kv/shed")
        assert response.status_code == 503
        assert response.json()["error"] == "pool_overloaded"
        assert (await holder).status_code == 200
        assert (await queued).status_code == 404  # it waited, then ran


async def test_open_circuit_answers_503_without_calling_the_upstream(upstream: Upstream) -> None:
    app = create_app(make_settings(TWS_BASE_URL=upstream.url), include_examples=True)
    app.include_router(probe_router)
    async for client in client_for(app):
        for _ in range(10):
            response = await client.get("/test/upstream")
            if response.status_code == 503:
                break
        assert response.status_code == 503
        assert response.json()["error"] == "backend_unavailable"
        assert int(response.headers["retry-after"]) >= 1
        before = upstream.requests
        assert (await client.get("/test/upstream")).status_code == 503
        assert upstream.requests == before  # failed fast: no traffic


async def test_a_commit_that_fails_is_the_response_not_a_lost_200(pg_url: str) -> None:
    table = f"deferred_{uuid.uuid4().hex[:8]}"
    app = create_app(make_settings(DATABASE_URL=pg_url), include_examples=True)
    app.include_router(probe_router)
    async for client in client_for(app):
        pool = app.state.resync_manager.pool("database")
        async with pool.get_connection() as session:
            await session.execute(
                text(f"CREATE TABLE {table} (id int, UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)")
            )
        try:
            response = await client.post(f"/test/deferred/{table}")
            assert response.status_code == 500
            assert response.json()["error"] == "backend_error"
            async with pool.get_connection() as session:
                rows = (await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar()
            assert rows == 0
        finally:
            async with pool.get_connection() as session:
                await session.execute(text(f"DROP TABLE {table}"))


class _HangingPool(InMemoryPool):
    def __init__(self) -> None:
        super().__init__(
            ConnectionPoolConfig(
                pool_name="stuck",
                min_size=0,
                max_size=1,
                connection_timeout=0.5,
                health_check_interval=0,
            )
        )
        self.hang = False

    async def _ping(self, connection: Any) -> None:
        if self.hang:
            await asyncio.sleep(3600)
