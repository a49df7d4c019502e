"""`resync serve` as a real process against PostgreSQL and Redis; `resync check` exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.helpers.net import free_port

RESYNC = str(Path(sys.executable).with_name("resync"))
PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
SECRET = "Sentinel-Pw-E2E-7731"


def service_env(pg_url: str, redis_url: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "REDIS_", "HTTP_"))}
    env.update(
        DATABASE_URL=pg_url,
        REDIS_URL=redis_url,
        PORT=str(port),
        HOST="127.0.0.1",
        DB_POOL_MIN_SIZE="2",
        DB_POOL_MAX_SIZE="10",
        POOL_DRAIN_TIMEOUT="10",
        LOG_LEVEL="INFO",
    )
    env.update(extra)
    env.pop("TWS_BASE_URL", None)
    return env


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"resync serve exited early with {proc.returncode}")
        try:
            if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("resync serve did not become ready")


@pytest.fixture
def service(
    pg_url: str, redis_url: str, tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [RESYNC, "serve"],
        env=service_env(pg_url, redis_url, port),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


async def pool_backends() -> dict[str, int]:
    """Backends of resync database pools on the shared server, by application_name."""
    conn = await asyncpg.connect(PG_DSN)
    try:
        rows = await conn.fetch(
            "SELECT application_name, count(*) AS n FROM pg_stat_activity "
            "WHERE application_name LIKE 'resync-database-%' GROUP BY application_name"
        )
        return {row["application_name"]: int(row["n"]) for row in rows}
    finally:
        await conn.close()


@pytest.mark.slow
async def test_serve_handles_200_concurrent_kv_requests(
    service: tuple[str, subprocess.Popen[bytes]],
) -> None:
    base, _ = service
    prefix = uuid.uuid4().hex[:8]
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def round_trip(i: int) -> tuple[int, int, str]:
            key = f"{prefix}-{i % 50}"
            put = await client.put(f"/api/kv/{key}", json={"value": f"v{i}"})
            got = await client.get(f"/api/kv/{key}")
            return put.status_code, got.status_code, got.json()["value"]

        results = await asyncio.gather(*(round_trip(i) for i in range(200)))
        assert all(put == 200 and got == 200 for put, got, _ in results)
        assert all(value.startswith("v") for _, _, value in results)
        pools = (await client.get("/pools")).json()["pools"]
        assert pools["database"]["peak_active"] <= 10
        assert pools["database"]["connection_errors"] == 0
        assert pools["redis"]["connection_errors"] == 0
        metrics = (await client.get("/metrics")).text
        assert (
            'resync_pool_leases_total{backend="database",'
            'db_client_connection_pool_name="database",pool="database"}'
        ) in metrics


@pytest.mark.slow
async def test_sigterm_lets_requests_in_flight_finish_then_exits_0_with_no_connection_left(
    service: tuple[str, subprocess.Popen[bytes]],
) -> None:
    base, proc = service
    key = f"inflight-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        assert (await client.put(f"/api/kv/{key}", json={"value": "before"})).status_code == 200
        names = (await client.get("/pools")).json()["pools"]["database"]["details"][
            "application_name"
        ]
        assert (await pool_backends()).get(names, 0) >= 2
        # Hold the row lock so the next PUTs block inside the service, mid-request.
        blocker = await asyncpg.connect(PG_DSN)
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT 1 FROM resync_kv WHERE key = $1 FOR UPDATE", key)
            in_flight = [
                asyncio.create_task(client.put(f"/api/kv/{key}", json={"value": f"during-{i}"}))
                for i in range(5)
            ]
            await asyncio.sleep(1.0)
            assert not any(t.done() for t in in_flight)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            assert proc.poll() is None  # still draining: requests are in flight
            await tx.rollback()
        finally:
            await blocker.close()
        responses = await asyncio.gather(*in_flight)
    assert [r.status_code for r in responses] == [200] * 5
    exit_code = await asyncio.to_thread(proc.wait, 15)
    assert exit_code == 0
    assert (await pool_backends()).get(names, 0) == 0
    conn = await asyncpg.connect(PG_DSN)
    try:
        value = await conn.fetchval("SELECT value FROM resync_kv WHERE key = $1", key)
        await conn.execute("DELETE FROM resync_kv WHERE key = $1", key)
    finally:
        await conn.close()
    assert value.startswith("during-")


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RESYNC, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_check_exits_0_when_every_required_pool_is_healthy(pg_url: str, redis_url: str) -> None:
    result = run_cli("check", env=service_env(pg_url, redis_url, 0))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "database" in result.stdout and "redis" in result.stdout
    assert "all required pools healthy" in result.stdout


def test_check_exits_1_when_the_database_is_unreachable(redis_url: str) -> None:
    dead = f"postgresql+asyncpg://app:{SECRET}@127.0.0.1:{free_port()}/app"
    result = run_cli(
        "check", "--json", env=service_env(dead, redis_url, 0, DB_POOL_CONNECT_TIMEOUT="2")
    )
    assert result.returncode == 1
    assert SECRET not in result.stdout + result.stderr
    assert '"healthy": false' in result.stdout


def test_config_masks_secrets_and_bad_settings_exit_2(pg_url: str, redis_url: str) -> None:
    secret_url = pg_url.replace("postgres@", f"postgres:{SECRET}@")
    shown = run_cli("config", "--json", env=service_env(secret_url, redis_url, 0))
    assert shown.returncode == 0
    assert SECRET not in shown.stdout
    assert "postgres:***@" in shown.stdout
    bad = run_cli("config", env=service_env(pg_url, redis_url, 0, DB_POOL_MAX_SIZE="0"))
    assert bad.returncode == 2
    assert "DB_POOL_MAX_SIZE" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_serve_with_an_optional_redis_down_starts_ready_and_serves_kv_from_the_database(
    pg_url: str, tmp_path: Path
) -> None:
    """Issue 14: REDIS_REQUIRED=false and Redis down at boot used to exit 3."""
    port = free_port()
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [RESYNC, "serve"],
        env=service_env(pg_url, dead_redis, port, REDIS_REQUIRED="false"),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    key = f"e2e-optional-{uuid.uuid4().hex[:8]}"
    try:
        wait_ready(base, proc)
        pools = httpx.get(f"{base}/pools", timeout=5).json()["pools"]
        assert pools["redis"]["health"]["state"] == "down"
        assert httpx.put(f"{base}/api/kv/{key}", json={"value": "v"}, timeout=5).status_code == 200
        answer = httpx.get(f"{base}/api/kv/{key}", timeout=5)
        assert answer.status_code == 200 and answer.json()["source"] == "database"
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        asyncio.run(_delete_kv(key))
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()


async def _delete_kv(key: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute("DELETE FROM resync_kv WHERE key = $1", key)
    finally:
        await conn.close()
