"""Every error path of the service answers by the contract and shows the secret nowhere.

The sentinel is everywhere a user's secret can be: in the password of every
pool URL (settings), in the request's headers (``Authorization``, an API-key
header, a cookie), in its query string, in its body, and in the driver error
behind each resync error (the cause a real driver would carry, quoting a
bound value). Each error path runs through the ASGI app; the answers, their
headers and every log record at DEBUG are checked.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from resync.api import DBSession, include_resync_routes, resync_lifespan
from resync.core.exceptions import (
    DatabaseCommitUnknownError,
    DatabaseConnectionLostError,
    DatabaseError,
    DatabasePoolOverloadedError,
    DatabasePoolTimeoutError,
    DatabaseStatementTimeoutError,
    HTTPDeadlineExceededError,
    HTTPStatusError,
    RedisUnavailableError,
)
from tests.security.conftest import make_settings
from tests.security.exposure import Exposure, Sentinel

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


class DriverError(Exception):
    """Stands in for a driver's error, whose text quotes what it was given."""


def error_cases(secret: str) -> dict[str, tuple[BaseException, int, str]]:
    """path -> (error raised by the route, status, code) of the contract's table."""

    def behind(error: BaseException, cause: BaseException | None = None) -> BaseException:
        error.__cause__ = cause or DriverError(f"value {secret!r} rejected")
        return error

    return {
        "pool-timeout": (
            behind(DatabasePoolTimeoutError("pool busy", pool_name="database")),
            503,
            "pool_timeout",
        ),
        "overloaded": (
            behind(DatabasePoolOverloadedError("too many waiting", pool_name="database")),
            503,
            "pool_overloaded",
        ),
        "breaker-open": (
            behind(RedisUnavailableError("circuit open", pool_name="redis")),
            503,
            "backend_unavailable",
        ),
        "refused": (
            behind(
                DatabaseError("operation failed", pool_name="database"),
                ConnectionRefusedError(111, f"refused {secret}"),
            ),
            503,
            "backend_unreachable",
        ),
        "lost": (
            behind(DatabaseConnectionLostError("connection lost", pool_name="database")),
            503,
            "backend_unreachable",
        ),
        "statement-timeout": (
            behind(DatabaseStatementTimeoutError("statement timed out", pool_name="database")),
            504,
            "statement_timeout",
        ),
        "deadline": (
            behind(HTTPDeadlineExceededError("deadline ran out", pool_name="tws_http")),
            504,
            "deadline_exceeded",
        ),
        "commit-unknown": (
            behind(DatabaseCommitUnknownError("commit unknown", pool_name="database")),
            500,
            "commit_outcome_unknown",
        ),
        "upstream": (
            behind(HTTPStatusError("upstream answered 500", pool_name="tws_http")),
            502,
            "upstream_error",
        ),
        "backend": (
            behind(DatabaseError("operation failed", pool_name="database")),
            500,
            "backend_error",
        ),
        "internal": (RuntimeError(f"something broke on {secret}"), 500, "internal_error"),
        "bad-text": (
            UnicodeEncodeError("utf-8", f"{secret}\ud800", len(secret), len(secret) + 1, "x"),
            422,
            "invalid_text",
        ),
    }


def build(settings: Any, cases: dict[str, tuple[BaseException, int, str]]) -> FastAPI:
    app = FastAPI(lifespan=lambda app: resync_lifespan(app, settings=settings))
    include_resync_routes(app)

    @app.get("/raise/{name}")
    async def raise_it(name: str) -> None:
        raise cases[name][0]

    @app.post("/cast")
    async def cast(body: dict[str, str], session: DBSession) -> Any:
        from sqlalchemy import text

        statement = text("SELECT CAST(CAST(:v AS text) AS integer)").bindparams(v=body["v"])
        return (await session.execute(statement)).scalar_one()

    return app


@pytest.fixture
async def client(
    urls: dict[str, str], secret: Sentinel
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, tuple[BaseException, int, str]]]]:
    cases = error_cases(secret.password)
    app = build(make_settings(urls), cases)
    headers = {
        "Authorization": f"Bearer {secret.password}",
        "X-Api-Key": secret.encoded,
        "Cookie": f"session={secret.encoded}",
    }
    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://svc", headers=headers
        ) as http:
            yield http, cases


class NotTheTestClient(logging.Filter):
    """Drop the test's own httpx client lines (they show the URL the test sent)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "http://svc/" not in record.getMessage()


@pytest.fixture(autouse=True)
def quiet_test_client() -> Iterator[None]:
    quiet = NotTheTestClient()
    logger = logging.getLogger("httpx")
    logger.addFilter(quiet)
    yield
    logger.removeFilter(quiet)


def record(exposure: Exposure, where: str, answer: httpx.Response) -> None:
    exposure.add(f"{where} body ({answer.status_code})", answer.text)
    exposure.add(f"{where} headers", dict(answer.headers))


async def test_every_error_path_answers_by_the_contract_and_leaks_nothing(
    client: tuple[httpx.AsyncClient, dict[str, tuple[BaseException, int, str]]],
    secret: Sentinel,
    exposure: Exposure,
) -> None:
    http, cases = client
    for name, (_, status, code) in cases.items():
        answer = await http.get(f"/raise/{name}", params={"token": secret.password})
        record(exposure, name, answer)
        assert answer.status_code == status, (name, answer.text)
        body = answer.json()
        assert set(body) == {"error", "pool", "detail", "request_id"}, name
        assert body["error"] == code, name
        assert body["request_id"] == answer.headers["x-request-id"], name
        if status == 503:
            assert int(answer.headers["retry-after"]) >= 1, name
        else:
            assert "retry-after" not in answer.headers, name

    # A real failing statement whose bound value is the secret.
    answer = await http.post("/cast", json={"v": secret.password})
    record(exposure, "real statement", answer)
    assert (answer.status_code, answer.json()["error"]) == (500, "backend_error")

    # Validation errors never echo the rejected input.
    answer = await http.post("/cast", json={"v": {"nested": secret.password}})
    record(exposure, "validation", answer)
    assert (answer.status_code, answer.json()["error"]) == (422, "validation_error")

    # A lone surrogate in a JSON string: 422, not a 500.
    answer = await http.post(
        "/cast", content=b'{"v": "\\ud800"}', headers={"content-type": "application/json"}
    )
    record(exposure, "lone surrogate", answer)
    assert answer.status_code == 422, answer.text

    # The operational routes, with the secret in every URL of the settings.
    for path in ("/pools", "/metrics", "/health/ready", "/nosuch"):
        record(exposure, path, await http.get(path, params={"token": secret.password}))
    exposure.assert_clean(at_least=len(cases) * 2 + 10)


async def test_the_error_log_line_names_the_request_id_and_the_pool(
    client: tuple[httpx.AsyncClient, dict[str, tuple[BaseException, int, str]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    http, _ = client
    answer = await http.get("/raise/backend", headers={"X-Request-ID": "trace-7"})
    assert answer.json()["request_id"] == "trace-7"
    answer = await http.get("/raise/internal", headers={"X-Request-ID": "not a token!"})
    generated = answer.json()["request_id"]
    assert generated != "not a token!" and len(generated) == 32
    lines = {r.getMessage() for r in caplog.records if r.name == "resync.api"}
    assert any("trace-7" in line and "backend_error" in line for line in lines)
    internal = [line for line in lines if generated in line]
    assert internal and "RuntimeError" in internal[0] and "message withheld" in internal[0]
    records = [r for r in caplog.records if getattr(r, "request_id", None) == "trace-7"]
    assert records and records[0].pool == "database"  # type: ignore[attr-defined]
