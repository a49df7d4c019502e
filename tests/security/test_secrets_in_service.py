"""The password in a URL never shows: the HTTP service, the CLI and bad settings.

``/pools``, ``/metrics``, ``/health/ready`` and error answers are read while
everything works and again while the backends fail; ``resync config`` and
``resync check`` run as real processes; ``resync serve`` runs at DEBUG; and
settings that are wrong next to a password must name the variable, not show
the password.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from resync.api import create_app
from resync.core.exceptions import (
    PoolConfigError,
    ResyncError,
    SettingsError,
)
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.pools.redis_pool import RedisConnectionPool
from resync.settings import Settings
from tests.helpers.net import free_port
from tests.helpers.redis_server import RedisServer
from tests.helpers.upstream import Upstream
from tests.security.conftest import make_settings
from tests.security.exposure import Exposure, Sentinel

pytestmark = [pytest.mark.postgres]

RESYNC = str(Path(sys.executable).with_name("resync"))


async def serve_in_process(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://resync") as client:
            yield client


async def record_endpoints(exposure: Exposure, client: httpx.AsyncClient, when: str) -> None:
    for path in ("/pools", "/metrics", "/health/ready", "/health/live", "/api/kv/k1"):
        response = await client.get(path)
        exposure.add(f"{when} GET {path} ({response.status_code})", response.text)
        exposure.add(f"{when} GET {path} headers", dict(response.headers))
    response = await client.put("/api/kv/k1", json={"value": "v"})
    exposure.add(f"{when} PUT /api/kv/k1 ({response.status_code})", response.text)


async def wait_for_health(app: FastAPI, state: str, names: tuple[str, ...]) -> None:
    manager = app.state.resync_manager
    deadline = time.monotonic() + 15
    while any(manager.health[n].state.value != state for n in names):
        assert time.monotonic() < deadline, {n: manager.health[n].state for n in names}
        await asyncio.sleep(0.05)


async def test_service_endpoints_while_working_and_while_failing(
    urls: dict[str, str], redis_server: RedisServer, upstream: Upstream, exposure: Exposure
) -> None:
    settings = make_settings(
        urls,
        REDIS_POOL_HEALTH_CHECK_INTERVAL=0.05,
        HTTP_POOL_HEALTH_CHECK_INTERVAL=0.05,
        REDIS_REQUIRED=True,
        HTTP_REQUIRED=True,
    )
    app = create_app(settings, include_examples=True)
    async for client in serve_in_process(app):
        await record_endpoints(exposure, client, "healthy")
        upstream.failing = True
        redis_server.stop()
        await wait_for_health(app, "down", ("redis", "tws_http"))
        await record_endpoints(exposure, client, "failing")
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        redis_server.start()
        upstream.failing = False
    exposure.assert_clean(at_least=30)


async def test_service_that_cannot_start(
    urls: dict[str, str], secret: Sentinel, exposure: Exposure
) -> None:
    dead = f"redis://:{secret.encoded}@127.0.0.1:{free_port()}/0"
    broken = {**urls, "REDIS_URL": dead, "REDIS_REQUIRED": "true"}
    app = create_app(make_settings(broken), include_examples=True)
    with exposure.expect_error("lifespan start") as caught:
        async with LifespanManager(app):
            pass
    assert isinstance(caught[0], ResyncError)
    # Optional: the service starts, and what it says about the dead pool is clean too.
    app = create_app(make_settings({**urls, "REDIS_URL": dead}), include_examples=True)
    async for client in serve_in_process(app):
        await record_endpoints(exposure, client, "optional redis down")
        pools = (await client.get("/pools")).json()["pools"]
        assert pools["redis"]["health"]["state"] == "down"
    exposure.assert_clean()


# --- the command line ---------------------------------------------------------------------------


def cli_env(values: dict[str, str], **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DB_", "REDIS_", "HTTP_", "DATABASE_", "TWS_"))
    }
    # Wide, plain output: a wrapped line must not split a secret past detection.
    env.update(COLUMNS="400", NO_COLOR="1", TERM="dumb", **values, **extra)
    return env


def run_cli(exposure: Exposure, args: list[str], env: dict[str, str], cwd: Path) -> int:
    result = subprocess.run(
        [RESYNC, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    where = f"resync {' '.join(args)}"
    exposure.add(f"{where}: stdout", result.stdout)
    exposure.add(f"{where}: stderr", result.stderr)
    # Rich may still break a long value across lines; look at it joined too.
    exposure.add(f"{where}: output unwrapped", re.sub(r"\s+", "", result.stdout + result.stderr))
    return result.returncode


@pytest.mark.slow
def test_resync_config_and_check(
    urls: dict[str, str], secret: Sentinel, exposure: Exposure, tmp_path: Path
) -> None:
    replica = {"DATABASE_REPLICA_URLS": urls["DATABASE_URL"]}
    env = cli_env({**urls, **replica, "REDIS_REQUIRED": "true"})
    assert run_cli(exposure, ["config"], env, tmp_path) == 0
    assert run_cli(exposure, ["config", "--json"], env, tmp_path) == 0
    assert run_cli(exposure, ["check"], env, tmp_path) == 0
    assert run_cli(exposure, ["check", "--json"], env, tmp_path) == 0
    down = cli_env(
        {
            **urls,
            "REDIS_URL": f"redis://:{secret.encoded}@127.0.0.1:{free_port()}/0",
            "TWS_BASE_URL": f"http://api:{secret.encoded}@127.0.0.1:{free_port()}",
            "REDIS_REQUIRED": "true",
            "REDIS_POOL_CONNECT_TIMEOUT": "1",
            "HTTP_POOL_CONNECT_TIMEOUT": "1",
        }
    )
    assert run_cli(exposure, ["check"], down, tmp_path) == 1
    assert run_cli(exposure, ["check", "--json"], down, tmp_path) == 1
    invalid = cli_env({**urls, "REDIS_URL": f"ftp://:{secret.encoded}@host/0"})
    assert run_cli(exposure, ["config"], invalid, tmp_path) == 2
    exposure.assert_clean(at_least=20)


@pytest.mark.slow
def test_resync_serve_at_debug(urls: dict[str, str], exposure: Exposure, tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(urls, LOG_LEVEL="DEBUG", PORT=str(port), HOST="127.0.0.1")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [RESYNC, "serve"], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            for path in ("/pools", "/metrics", "/health/ready", "/api/kv/missing"):
                response = httpx.get(base + path, timeout=5)
                exposure.add(f"serve GET {path}", response.text)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    output = log.read_text()
    assert "DEBUG" in output  # the process really logged at DEBUG
    exposure.add("resync serve output", output)
    exposure.add("resync serve output unwrapped", re.sub(r"\s+", "", output))
    exposure.assert_clean()


# --- bad settings and bad URLs next to a password -------------------------------------------------


def broken_settings(secret: Sentinel) -> dict[str, dict[str, Any]]:
    pw = secret.encoded
    return {
        "scheme": {"REDIS_URL": f"ftp://:{pw}@127.0.0.1/0"},
        "http scheme": {"TWS_BASE_URL": f"ftp://api:{pw}@127.0.0.1"},
        "database port": {"DATABASE_URL": f"postgresql+asyncpg://u:{pw}@127.0.0.1:port/db"},
        "database garbage": {"DATABASE_URL": f"::{pw}::"},
        "redis port": {"REDIS_URL": f"redis://:{pw}@127.0.0.1:port/0"},
        "redis ipv6": {"REDIS_URL": f"redis://:{pw}@[::1/0"},
        "http ipv6": {"TWS_BASE_URL": f"http://api:{pw}@[::1"},
        "no host": {"TWS_BASE_URL": f"http://api:{pw}@"},
        "sizes": {"DATABASE_URL": f"postgresql://u:{pw}@h/db", "DB_POOL_MAX_SIZE": 0},
        "raw password": {"DATABASE_URL": f"postgresql://u:{secret.password}@h:x/db"},
    }


def test_invalid_settings_name_the_variable_not_the_password(
    secret: Sentinel, exposure: Exposure
) -> None:
    for name, values in broken_settings(secret).items():
        with exposure.expect_error(name) as caught:
            Settings(_env_file=None, **values)  # type: ignore[call-arg]
        assert isinstance(caught[0], SettingsError)
        assert any(key in str(caught[0]) for key in values), caught[0]
    exposure.assert_clean()


def test_pool_constructors_refuse_bad_urls_with_typed_errors(
    secret: Sentinel, exposure: Exposure
) -> None:
    config = ConnectionPoolConfig(pool_name="bad-url", min_size=0, max_size=1)
    pw = secret.encoded
    for name, build in {
        "redis scheme": lambda: RedisConnectionPool(config, f"ftp://:{pw}@h/0"),
        "redis ipv6": lambda: RedisConnectionPool(config, f"redis://:{pw}@[::1/0"),
        "http scheme": lambda: HTTPConnectionPool(config, f"ftp://api:{pw}@h"),
        "http ipv6": lambda: HTTPConnectionPool(config, f"http://api:{pw}@[::1"),
        "http port": lambda: HTTPConnectionPool(config, f"http://api:{pw}@h:port"),
    }.items():
        with exposure.expect_error(name) as caught:
            build()
        assert isinstance(caught[0], PoolConfigError), caught[0]
    exposure.assert_clean()
