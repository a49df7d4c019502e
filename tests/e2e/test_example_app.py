"""The example app of examples/fastapi_app, driven as its users would, on real servers.

Its own FastAPI app and lifespan, resync inside: PostgreSQL (shared server,
or behind a fault proxy for the outage), Redis (a throwaway ``redis-server``
that the tests start and stop), a second database pool from ``POOLS``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from examples.fastapi_app.app import build_app
from resync.settings import Settings
from tests.faults.proxy import FaultProxy
from tests.helpers.redis_server import RedisServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SECRET = "user-api-key-XYZ123-sentinel"


def settings_for(pg_url: str, **values: Any) -> Settings:
    base: dict[str, Any] = {
        "DATABASE_URL": pg_url,
        "DB_POOL_MIN_SIZE": 1,
        "DB_POOL_MAX_SIZE": 4,
        "DB_POOL_CONNECT_TIMEOUT": 2,
        "DB_POOL_HEALTH_CHECK_INTERVAL": 0.2,
        "REDIS_POOL_CONNECT_TIMEOUT": 1,
        "REDIS_POOL_HEALTH_CHECK_INTERVAL": 0.2,
        "POOL_DRAIN_TIMEOUT": 2,
        "POOLS": {"reports": {"url": pg_url, "min_size": 0, "max_size": 2}},
    }
    return Settings(**{**base, **values})


@pytest.fixture(autouse=True)
async def drop_example_table(pg_url: str) -> AsyncIterator[None]:
    yield
    url = make_url(pg_url)
    conn = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )
    try:
        await conn.execute("DROP TABLE IF EXISTS example_orders")
    finally:
        await conn.close()


@asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
            yield client


async def wait_until(check: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def pool_state(client: httpx.AsyncClient, name: str) -> str:
    pools = (await client.get("/ops/pools")).json()["pools"]
    return str(pools[name]["health"]["state"])


async def test_the_example_serves_orders_with_its_cache_reports_and_metrics(
    pg_url: str, tmp_path: Path
) -> None:
    with RedisServer(tmp_path) as redis_server:
        app = build_app(settings_for(pg_url, REDIS_URL=redis_server.url()))
        async with client_for(app) as client:
            assert app.title == "orders"
            created = await client.post("/orders", json={"item": "tea", "quantity": 2})
            assert created.status_code == 201, created.text
            order_id = created.json()["id"]
            first = (await client.get(f"/orders/{order_id}")).json()
            second = (await client.get(f"/orders/{order_id}")).json()
            assert (first["source"], second["source"]) == ("database", "cache")
            assert (await client.get("/reports/count")).json() == {"orders": 1}
            assert (await client.get("/ops/health/ready")).status_code == 200
            pools = (await client.get("/ops/pools")).json()["pools"]
            assert set(pools) == {"database", "redis", "reports"}
            metrics = (await client.get("/ops/metrics")).text
            # The app's own counter (prometheus-client's default registry) and resync's,
            # with the OpenTelemetry label names beside the old ones.
            assert "orders_created_total" in metrics
            assert "process_cpu_seconds_total" in metrics
            assert 'db_client_connection_pool_name="reports"' in metrics
            # The example's routes only: resync serve's /api/kv is not mounted here.
            assert (await client.get("/api/kv/x")).status_code == 404


async def test_redis_down_at_boot_then_back_then_down_again(pg_url: str, tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path)  # not started: its port refuses
    app = build_app(settings_for(pg_url, REDIS_URL=redis_server.url()))
    try:
        async with client_for(app) as client:
            # Up and ready without Redis; the optional route reads the database.
            assert (await client.get("/ops/health/ready")).status_code == 200
            assert await pool_state(client, "redis") == "down"
            order_id = (await client.post("/orders", json={"item": "a", "quantity": 1})).json()[
                "id"
            ]
            for _ in range(2):
                answer = await client.get(f"/orders/{order_id}")
                assert answer.status_code == 200 and answer.json()["source"] == "database"

            redis_server.start()  # Redis comes back: the pool opens by itself

            async def redis_healthy() -> bool:
                return await pool_state(client, "redis") == "healthy"

            await wait_until(redis_healthy, "the redis pool to open in the background")
            await client.get(f"/orders/{order_id}")
            assert (await client.get(f"/orders/{order_id}")).json()["source"] == "cache"

            redis_server.stop()  # down at runtime: every request still answers
            for _ in range(5):
                answer = await client.get(f"/orders/{order_id}")
                assert answer.status_code == 200, answer.text
                assert answer.json()["source"] == "database"
            created = await client.post("/orders", json={"item": "b", "quantity": 1})
            assert created.status_code == 201
            assert (await client.get("/ops/health/ready")).status_code == 200
    finally:
        redis_server.stop()


async def test_postgres_down_answers_503_with_retry_after_and_recovers(pg_url: str) -> None:
    url = make_url(pg_url)
    with FaultProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        proxied = url.set(host=proxy.host, port=proxy.port).render_as_string(hide_password=False)
        app = build_app(settings_for(proxied, DB_POOL_CONNECT_TIMEOUT=1, POOLS={}))
        async with client_for(app) as client:
            order_id = (await client.post("/orders", json={"item": "c", "quantity": 3})).json()[
                "id"
            ]
            proxy.refuse_new()
            proxy.reset_all()
            started = time.monotonic()
            answers = [await client.get(f"/orders/{order_id}") for _ in range(5)]
            elapsed = time.monotonic() - started
            for answer in answers:
                assert answer.status_code == 503, answer.text
                body = answer.json()
                assert body["pool"] == "database"
                assert body["error"] in {"backend_unreachable", "backend_unavailable"}
                assert int(answer.headers["retry-after"]) >= 1
                assert body["request_id"] == answer.headers["x-request-id"]
            # Each answer is bounded by the connect timeout (1 s), not a hang.
            assert elapsed < 5 * (1 + 0.5), elapsed
            proxy.heal()

            async def answers_again() -> bool:
                return (await client.get(f"/orders/{order_id}")).status_code == 200

            await wait_until(answers_again, "the database to answer again", timeout=20)


async def test_a_secret_bound_parameter_is_in_no_answer_and_no_log_line(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = build_app(settings_for(pg_url, LOG_LEVEL="DEBUG"))
    async with client_for(app) as client:
        answer = await client.post(
            "/orders/lookup", json={"ref": SECRET}, headers={"X-Request-ID": "req-42"}
        )
        assert answer.status_code == 500
        body = answer.json()
        assert body == {
            "error": "backend_error",
            "pool": "database",
            "detail": "pool 'database': the operation failed",
            "request_id": "req-42",
        }
        assert SECRET not in answer.text and SECRET not in json.dumps(dict(answer.headers))
        # Control: a numeric ref works.
        assert (await client.post("/orders/lookup", json={"ref": "7"})).json() == {"found": False}
    lines = [caplog.handler.format(record) for record in caplog.records]
    assert any("req-42" in line for line in lines), "the error's log line carries the request id"
    leaked = [line for line in lines if SECRET in line]
    assert leaked == []
