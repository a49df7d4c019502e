"""A request's deadline from its headers (issue 17): ``X-Request-Timeout``, ``grpc-timeout``.

The service's leases run inside ``resync.deadline()`` of what the request
asked for; a statement that outlives it answers 504 ``deadline_exceeded`` in
the error contract, at the deadline and not at the pool's own timeouts (the
statement timeout here is 30 s).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import BackgroundTasks, FastAPI
from sqlalchemy import text

import resync
from resync.api import DBSession, include_resync_routes, resync_lifespan
from resync.api.errors import deadline_of_headers
from resync.settings import Settings

pytestmark = pytest.mark.postgres

#: What the background task saw (time left, its statement's result).
SEEN: list[object] = []


@pytest.fixture
async def client(pg_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        _env_file=None,
        DATABASE_URL=pg_url,
        DB_POOL_MIN_SIZE=1,
        DB_POOL_STATEMENT_TIMEOUT=30,
        DB_POOL_HEALTH_CHECK_INTERVAL=0,
        POOL_DRAIN_TIMEOUT=1,
    )
    app = FastAPI(lifespan=functools.partial(resync_lifespan, settings=settings))
    include_resync_routes(app)

    @app.get("/sleep")
    async def sleep(session: DBSession, seconds: float = 3.0) -> float:
        await session.execute(text("SELECT pg_sleep(:s)").bindparams(s=seconds))
        return seconds

    @app.get("/left")
    async def left() -> float | None:
        return resync.time_left()

    @app.get("/later")
    async def later(tasks: BackgroundTasks) -> str:
        async def after_the_answer() -> None:
            import asyncio

            await asyncio.sleep(0.1)  # past the request's deadline
            SEEN.append(resync.time_left())
            async with pool_of(app).get_connection() as session:
                SEEN.append((await session.execute(text("SELECT 1"))).scalar_one())

        tasks.add_task(after_the_answer)
        return "queued"

    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as http:
            yield http


@pytest.mark.parametrize(
    "headers",
    [{"X-Request-Timeout": "0.3"}, {"grpc-timeout": "300m"}, {"grpc-timeout": "300000u"}],
)
async def test_a_statement_past_the_requests_deadline_answers_504_at_the_deadline(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    started = time.monotonic()
    answer = await client.get("/sleep", headers=headers)
    elapsed = time.monotonic() - started
    assert answer.status_code == 504, answer.text
    body = answer.json()
    assert body["error"] == "deadline_exceeded"
    assert body["pool"] == "database"
    assert body["detail"] == "pool 'database': the request's deadline ran out"
    assert "retry-after" not in answer.headers
    assert 0.3 <= elapsed < 1.5  # the deadline, not the 30 s statement timeout
    # The pool serves the next request at once (the cut connection was discarded).
    assert (await client.get("/sleep", params={"seconds": 0})).status_code == 200


async def test_the_deadline_is_in_force_in_the_handler_and_the_earlier_header_wins(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/left")).json() is None  # no header: no deadline
    left = (await client.get("/left", headers={"X-Request-Timeout": "5"})).json()
    assert 4 < left <= 5
    both = {"X-Request-Timeout": "5", "grpc-timeout": "2S"}
    assert 1 < (await client.get("/left", headers=both)).json() <= 2


async def test_a_request_out_of_time_on_arrival_fails_at_once(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    answer = await client.get("/sleep", headers={"X-Request-Timeout": "0"})
    assert answer.status_code == 504 and answer.json()["error"] == "deadline_exceeded"
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("value", ["soon", "-1", "1e3", "5 s", "100", "999999999S", ""])
async def test_a_malformed_header_is_ignored_with_a_debug_line(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    with caplog.at_level(logging.DEBUG, logger="resync.api"):
        answer = await client.get("/left", headers={"grpc-timeout": value})
    assert answer.status_code == 200 and answer.json() is None
    assert any("malformed grpc-timeout" in r.getMessage() for r in caplog.records)


def pool_of(app: FastAPI) -> Any:
    return app.state.resync_manager.pools["database"]


async def test_background_tasks_run_after_the_answer_without_the_deadline(
    client: httpx.AsyncClient,
) -> None:
    SEEN.clear()
    answer = await client.get("/later", headers={"X-Request-Timeout": "0.05"})
    assert answer.status_code == 200
    assert SEEN == [None, 1]  # no deadline in force, and the lease was granted


def test_header_forms() -> None:
    assert deadline_of_headers([(b"x-request-timeout", b"2.5")]) == (2.5, "X-Request-Timeout")
    assert deadline_of_headers([(b"grpc-timeout", b"2S")]) == (2.0, "grpc-timeout")
    assert deadline_of_headers([(b"grpc-timeout", b"1M")]) == (60.0, "grpc-timeout")
    assert deadline_of_headers([(b"grpc-timeout", b"1H")]) == (3600.0, "grpc-timeout")
    seconds, _ = deadline_of_headers([(b"grpc-timeout", b"5n")]) or (None, None)
    assert seconds == pytest.approx(5e-9)
    assert deadline_of_headers([(b"x-request-id", b"1")]) is None
