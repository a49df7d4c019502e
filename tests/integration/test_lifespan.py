"""resync in a FastAPI app of the user's: resync_lifespan, include_resync_routes, pool_lease.

Each test builds its own ``FastAPI(...)`` the way the README shows, runs its
lifespan with asgi-lifespan and talks to it over ASGI.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client import REGISTRY, Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import resync.settings as settings_module
from resync.api import (
    DBSession,
    include_resync_routes,
    pool_dependency,
    pool_lease,
    resync_lifespan,
)
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.pool_manager import ConnectionPoolManager
from resync.settings import Settings
from resync.testing import InMemoryPool
from resync.testing.memory_pool import InMemoryConnection

TOKEN = "t" * 32


def sqlite_settings(**values: Any) -> Settings:
    return Settings(
        DATABASE_URL="sqlite+aiosqlite:///:memory:",
        DB_POOL_HEALTH_CHECK_INTERVAL=0,
        POOL_DRAIN_TIMEOUT=1,
        **values,
    )


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


def add_probe(app: FastAPI) -> None:
    @app.get("/one")
    async def one(session: DBSession) -> int:
        return int((await session.execute(text("SELECT 1"))).scalar_one())


async def test_lifespan_equals_resync_lifespan_reads_the_process_settings_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///:memory:")
    monkeypatch.setenv("DB_POOL_MAX_SIZE", "3")
    monkeypatch.setattr(settings_module, "_process_settings", None)
    app = FastAPI(title="orders", lifespan=resync_lifespan)  # nothing is read here
    assert settings_module._process_settings is None
    add_probe(app)
    async with served(app) as client:
        assert (await client.get("/one")).json() == 1
        manager = app.state.resync_manager
        assert manager.pool("database").config.max_size == 3
        # No route of resync's exists unless asked for.
        assert (await client.get("/health/live")).status_code == 404
    assert manager.is_shutdown  # the lifespan opened it, so it closed it
    monkeypatch.setattr(settings_module, "_process_settings", None)


async def test_inside_the_apps_own_lifespan_with_explicit_settings() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("before")
        async with resync_lifespan(app, settings=sqlite_settings()):
            events.append("pools open: " + ", ".join(app.state.resync_manager.pools))
            yield
        events.append("after")

    app = FastAPI(lifespan=lifespan)
    add_probe(app)
    async with served(app) as client:
        assert (await client.get("/one")).json() == 1
    assert events == ["before", "pools open: database", "after"]


async def test_a_ready_manager_is_used_and_left_open_for_its_owner() -> None:
    manager = ConnectionPoolManager(sqlite_settings())
    await manager.initialize()
    try:
        app = FastAPI(lifespan=functools.partial(resync_lifespan, manager=manager))
        add_probe(app)
        async with served(app) as client:
            assert (await client.get("/one")).json() == 1
            assert app.state.resync_manager is manager
        assert manager.is_open
    finally:
        await manager.close_all()


async def test_settings_and_manager_together_are_refused() -> None:
    app = FastAPI()
    with pytest.raises(TypeError, match="settings= or manager="):
        async with resync_lifespan(
            app, settings=sqlite_settings(), manager=ConnectionPoolManager(sqlite_settings())
        ):
            pass


@pytest.mark.parametrize(
    ("flags", "present", "absent"),
    [
        ({}, ["/health/live", "/health/ready", "/metrics", "/pools"], []),
        ({"metrics": False, "pools": False}, ["/health/live"], ["/metrics", "/pools"]),
        ({"health": False}, ["/metrics", "/pools"], ["/health/live", "/health/ready"]),
    ],
)
async def test_each_route_family_is_opt_in(
    flags: dict[str, bool], present: list[str], absent: list[str]
) -> None:
    app = FastAPI(lifespan=functools.partial(resync_lifespan, settings=sqlite_settings()))
    include_resync_routes(app, **flags)
    async with served(app) as client:
        for path in present:
            assert (await client.get(path)).status_code == 200, path
        for path in absent:
            assert (await client.get(path)).status_code == 404, path


async def test_a_prefix_moves_every_route_and_a_bad_prefix_is_refused() -> None:
    app = FastAPI(lifespan=functools.partial(resync_lifespan, settings=sqlite_settings()))
    include_resync_routes(app, prefix="/ops")
    async with served(app) as client:
        assert (await client.get("/ops/health/ready")).status_code == 200
        assert (await client.get("/health/ready")).status_code == 404
    for bad in ("ops", "/ops/"):
        with pytest.raises(ValueError, match="prefix"):
            include_resync_routes(FastAPI(), prefix=bad)


async def test_admin_routes_exist_only_with_a_token() -> None:
    without = sqlite_settings()
    app = FastAPI(lifespan=functools.partial(resync_lifespan, settings=without))
    include_resync_routes(app, admin=True, settings=without)
    async with served(app) as client:
        assert (await client.post("/pools/database/drain")).status_code == 404
    with_token = sqlite_settings(ADMIN_TOKEN=TOKEN)
    app = FastAPI(lifespan=functools.partial(resync_lifespan, settings=with_token))
    include_resync_routes(app, admin=True, settings=with_token)
    async with served(app) as client:
        assert (await client.post("/pools/database/drain")).status_code == 401
        answer = await client.post(
            "/pools/database/drain", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert answer.status_code == 200


APP_COUNTER = Counter("lifespan_test_requests", "a counter the app registers itself")


async def test_metrics_include_the_apps_own_registry_unless_turned_off() -> None:
    APP_COUNTER.inc()
    app = FastAPI(lifespan=functools.partial(resync_lifespan, settings=sqlite_settings()))
    include_resync_routes(app)
    async with served(app) as client:
        body = (await client.get("/metrics")).text
    assert "lifespan_test_requests_total" in body
    assert "db_client_connection_max" in body
    assert REGISTRY.get_sample_value("lifespan_test_requests_total") is not None
    app = FastAPI(lifespan=functools.partial(resync_lifespan, settings=sqlite_settings()))
    include_resync_routes(app, app_metrics=False)
    async with served(app) as client:
        body = (await client.get("/metrics")).text
    assert "lifespan_test_requests_total" not in body
    assert "db_client_connection_max" in body


async def test_routes_before_the_lifespan_ran_answer_503_not_500() -> None:
    app = FastAPI()  # no resync lifespan at all
    include_resync_routes(app)
    add_probe(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        for path in ("/metrics", "/pools", "/health/ready", "/one"):
            answer = await client.get(path)
            assert answer.status_code == 503, path
            assert answer.json()["error"] == "pool_not_configured", path


Memory = Annotated[InMemoryConnection, pool_lease("workers")]
Reports = pool_dependency("reports", AsyncSession)


async def test_pool_lease_serves_a_registered_pool_and_names_a_missing_one() -> None:
    manager = ConnectionPoolManager(sqlite_settings())
    workers = InMemoryPool(ConnectionPoolConfig(pool_name="workers", min_size=0, max_size=2))
    await manager.register("workers", workers)
    app = FastAPI(lifespan=functools.partial(resync_lifespan, manager=manager))
    include_resync_routes(app)

    @app.get("/work")
    async def work(connection: Memory) -> str:
        return type(connection).__name__

    @app.get("/report")
    async def report(session: Reports) -> int:  # type: ignore[valid-type]
        return 1

    async with served(app) as client:
        assert (await client.get("/work")).json() == "InMemoryConnection"
        assert workers.stats.pool_hits == 1
        answer = await client.get("/report")
        assert answer.status_code == 503
        assert answer.json()["error"] == "pool_not_configured"
        assert answer.json()["pool"] == "reports"
        assert "reports" in answer.json()["detail"]
