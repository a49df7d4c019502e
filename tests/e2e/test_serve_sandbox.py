"""A live ``resync serve`` under test shares a test's sandbox through ``X-Resync-Sandbox``.

The server runs as a real process with ``RESYNC_TEST_SANDBOX=true``; a test
module run through ``pytester`` drives it with the header its ``resync_sandbox``
gives (``share(base_url)``), and the plugin ends the server's sandbox when that
test ends. Afterwards nothing the requests wrote is in the database.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from fastapi import FastAPI

from resync.api.sandbox import install_sandbox_header
from resync.core.exceptions import ConfigurationError
from resync.settings import Settings
from tests.e2e.test_serve import PG_DSN, RESYNC, service_env, wait_ready
from tests.helpers.net import free_port

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
addopts = --strict-markers -p no:cacheprovider
"""


async def _kv_rows(key: str) -> int:
    conn = await asyncpg.connect(PG_DSN)
    try:
        exists = await conn.fetchval("SELECT to_regclass('resync_kv') IS NOT NULL")
        if not exists:
            return 0
        return int(await conn.fetchval("SELECT count(*) FROM resync_kv WHERE key = $1", key))
    finally:
        await conn.close()


@pytest.fixture
def sandbox_server(pg_url: str, tmp_path: Path) -> Iterator[str]:
    """``resync serve`` on PostgreSQL with the sandbox header honoured (no Redis)."""
    port = free_port()
    env = service_env(pg_url, "", port, RESYNC_TEST_SANDBOX="true")
    env.pop("REDIS_URL")
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [RESYNC, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung shutdown
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_requests_with_the_header_share_one_sandbox_rolled_back_when_the_test_ends(
    pytester: pytest.Pytester, sandbox_server: str
) -> None:
    key = f"sandbox-{uuid.uuid4().hex[:10]}"
    pytester.makeini(INI)
    pytester.makepyfile(
        test_e2e=f"""
import httpx
import pytest

BASE = {sandbox_server!r}
KEY = {key!r}

@pytest.mark.resync_sandbox
async def test_e2e(resync_sandbox):
    headers = resync_sandbox.share(BASE)
    async with httpx.AsyncClient(base_url=BASE, headers=headers) as client:
        assert (await client.put(f"/api/kv/{{KEY}}", json={{"value": "v1"}})).status_code == 200
        got = await client.get(f"/api/kv/{{KEY}}")
        assert got.status_code == 200 and got.json()["value"] == "v1"
        too_long = {{"value": "x" * 100001}}  # refused (422): the sandbox is still fine
        assert (await client.put(f"/api/kv/{{KEY}}", json=too_long)).status_code == 422
        assert (await client.get(f"/api/kv/{{KEY}}")).json()["value"] == "v1"
    async with httpx.AsyncClient(base_url=BASE) as outside:  # no header: not in the sandbox
        assert (await outside.get(f"/api/kv/{{KEY}}")).status_code == 404

async def test_bad_ids_are_refused():
    async with httpx.AsyncClient(base_url=BASE) as client:
        answer = await client.get("/health/live", headers={{"X-Resync-Sandbox": "short"}})
        assert answer.status_code == 400
        assert answer.json()["code"] == "bad_sandbox_id"
""",
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2)
    assert asyncio.run(_kv_rows(key)) == 0


def test_the_header_is_ignored_unless_the_setting_is_on_and_refused_off_loopback() -> None:
    app = FastAPI()
    assert install_sandbox_header(app, Settings(_env_file=None)) is False
    assert app.user_middleware == []
    assert install_sandbox_header(app, Settings(_env_file=None, RESYNC_TEST_SANDBOX=True))
    assert len(app.user_middleware) == 1
    with pytest.raises(ConfigurationError, match=r"HOST must be 127\.0\.0\.1"):
        Settings(_env_file=None, RESYNC_TEST_SANDBOX=True, HOST="0.0.0.0")
