"""Fixtures of the security suite: a sentinel password in every URL, servers that check it.

Every test runs twice: with a plain password and with one full of URL syntax
(``@ : / %``) that must be percent-encoded in a URL. The password is real
where the server can check it: the throwaway ``redis-server`` runs with
``--requirepass``, and the upstream receives it as HTTP Basic credentials. The
shared PostgreSQL trusts loopback logins and ignores it; the tests that need
PostgreSQL to check it start their own cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from resync.settings import Settings
from tests.helpers.redis_server import RedisServer
from tests.helpers.upstream import Upstream
from tests.security.exposure import Exposure, Sentinel

SENTINELS = {
    "plain": Sentinel("Zq7SentinelPw4kX"),
    "url-syntax": Sentinel("Zq7Sentinel@:/%Tail9x"),
}


@pytest.fixture(scope="module", params=list(SENTINELS))
def secret(request: pytest.FixtureRequest) -> Sentinel:
    """The password of this run (one module run per sentinel)."""
    return SENTINELS[request.param]


@pytest.fixture
def exposure(secret: Sentinel) -> Iterator[Exposure]:
    """Records every surface; every log record of every logger is captured at DEBUG."""
    seen = Exposure(secret)
    with seen.debug_logs():
        yield seen


@pytest.fixture
def redis_server(tmp_path: Path, secret: Sentinel) -> Iterator[RedisServer]:
    """A throwaway redis-server that requires the sentinel password."""
    with RedisServer(tmp_path, password=secret.password) as server:
        yield server


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


def pg_url_with(pg_url: str, password: str) -> str:
    """``pg_url`` with ``password`` in it (percent-encoded as needed)."""
    return make_url(pg_url).set(password=password).render_as_string(hide_password=False)


def redis_url_with(server: RedisServer, secret: Sentinel, suffix: str = "") -> str:
    return server.url(password=Sentinel(secret.password + suffix).encoded)


def http_url_with(upstream: Upstream, secret: Sentinel) -> str:
    return f"http://{secret.http_user}:{secret.encoded}@127.0.0.1:{upstream.port}"


@pytest.fixture
def urls(
    pg_url: str, secret: Sentinel, redis_server: RedisServer, upstream: Upstream
) -> dict[str, str]:
    """The three URLs, each carrying the sentinel password."""
    return {
        "DATABASE_URL": pg_url_with(pg_url, secret.password),
        "REDIS_URL": redis_url_with(redis_server, secret),
        "TWS_BASE_URL": http_url_with(upstream, secret),
    }


def make_settings(urls: dict[str, str], **overrides: Any) -> Settings:
    """Settings for the three pools: small, quick to fail, no background checks."""
    values: dict[str, Any] = {
        **urls,
        "DB_POOL_MIN_SIZE": 1,
        "DB_POOL_MAX_SIZE": 4,
        "DB_POOL_CONNECT_TIMEOUT": 3,
        "REDIS_POOL_CONNECT_TIMEOUT": 3,
        "HTTP_POOL_CONNECT_TIMEOUT": 3,
        "DB_POOL_HEALTH_CHECK_INTERVAL": 0,
        "REDIS_POOL_HEALTH_CHECK_INTERVAL": 0,
        "HTTP_POOL_HEALTH_CHECK_INTERVAL": 0,
        "POOL_DRAIN_TIMEOUT": 2,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]
