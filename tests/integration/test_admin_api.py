"""POST /pools/{name}/drain and /resize: off without ADMIN_TOKEN, 401/403/200 with it.

The app runs in-process (asgi-lifespan) on embedded SQLite plus the shared
Redis, so a drain really replaces Redis connections.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from resync.api import create_app
from resync.settings import Settings

TOKEN = "Admin-Token-" + "7" * 24
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def make_settings(**values: Any) -> Settings:
    values.setdefault("DB_POOL_MIN_SIZE", 1)
    values.setdefault("DB_POOL_MAX_SIZE", 4)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, include_examples=False)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://resync") as client:
            yield client


async def test_without_admin_token_the_admin_routes_do_not_exist() -> None:
    async with service(make_settings()) as client:
        for path in ("/pools/database/drain", "/pools/database/resize"):
            response = await client.post(path, headers=BEARER)
            assert response.status_code == 404
        schema = (await client.get("/openapi.json")).json()
        assert not any(path.endswith(("/drain", "/resize")) for path in schema["paths"])


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ({"Authorization": "Bearer "}, 401),
        ({"Authorization": "Bearer not-the-admin-token-at-all"}, 403),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403),
        ({"Authorization": f"Bearer {TOKEN[:-1]}"}, 403),
    ],
)
async def test_missing_or_wrong_tokens_are_refused(
    headers: dict[str, str], status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with service(make_settings(ADMIN_TOKEN=TOKEN)) as client:
        before = (await client.get("/pools")).json()["pools"]["database"]["connection_closures"]
        drain = await client.post("/pools/database/drain?interval=0", headers=headers)
        resize = await client.post(
            "/pools/database/resize", headers=headers, json={"min_size": 0, "max_size": 9}
        )
        stats = (await client.get("/pools")).json()["pools"]["database"]
    assert drain.status_code == resize.status_code == status
    if status == 401:
        assert drain.headers["www-authenticate"].startswith("Bearer")
    # Nothing happened to the pool.
    assert stats["connection_closures"] == before
    assert stats["max_size"] == 4
    # The token is neither echoed nor logged, whatever was sent.
    for text in (drain.text, resize.text, caplog.text):
        assert TOKEN[:20] not in text
    assert "refused" in caplog.text


async def test_the_token_in_the_query_string_is_not_accepted() -> None:
    async with service(make_settings(ADMIN_TOKEN=TOKEN)) as client:
        response = await client.post(f"/pools/database/drain?token={TOKEN}")
    assert response.status_code == 401


@pytest.mark.redis
async def test_drain_with_the_token_replaces_the_redis_connections(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(
        ADMIN_TOKEN=TOKEN, REDIS_URL=redis_url, REDIS_POOL_MIN_SIZE=2, REDIS_POOL_MAX_SIZE=4
    )
    async with service(settings) as client:
        before = (await client.get("/pools")).json()["pools"]["redis"]
        response = await client.post("/pools/redis/drain?interval=0.1", headers=BEARER)
        after = (await client.get("/pools")).json()["pools"]["redis"]
        missing = await client.post("/pools/nope/drain", headers=BEARER)
        too_long = await client.post("/pools/redis/drain?interval=9999", headers=BEARER)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pool"] == "redis" and body["replaced"] == 2
    assert after["connection_closures"] - before["connection_closures"] == 2
    assert after["connection_creations"] - before["connection_creations"] == 2
    assert missing.status_code == 404 and "redis" in missing.json()["detail"]
    assert too_long.status_code == 422
    assert TOKEN[:20] not in caplog.text
    assert "pool 'redis' drained" in caplog.text


async def test_resize_with_the_token_changes_the_sizes_and_refuses_bad_ones() -> None:
    async with service(make_settings(ADMIN_TOKEN=TOKEN)) as client:
        ok = await client.post(
            "/pools/database/resize", headers=BEARER, json={"min_size": 1, "max_size": 7}
        )
        stats = (await client.get("/pools")).json()["pools"]["database"]
        inverted = await client.post(
            "/pools/database/resize", headers=BEARER, json={"min_size": 5, "max_size": 2}
        )
        negative = await client.post(
            "/pools/database/resize", headers=BEARER, json={"min_size": -1, "max_size": 2}
        )
    assert ok.status_code == 200, ok.text
    assert ok.json()["max_size"] == 7
    assert stats["max_size"] == 7
    assert inverted.status_code == 422 and "max_size" in inverted.json()["detail"]
    assert negative.status_code == 422
