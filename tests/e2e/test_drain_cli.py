"""`resync drain` / `resync resize` against a real `resync serve` process with ADMIN_TOKEN."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_serve import RESYNC, service_env, wait_ready
from tests.helpers.net import free_port

TOKEN = "E2E-Admin-Token-" + "4" * 20
WRONG = "E2E-Wrong-Token-" + "9" * 20

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def admin_service(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A `resync serve` with ADMIN_TOKEN set; yields its base URL and its log file."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = service_env(
        pg_url,
        redis_url,
        port,
        ADMIN_TOKEN=TOKEN,
        REDIS_POOL_MIN_SIZE="2",
        REDIS_POOL_MAX_SIZE="4",
        LOG_LEVEL="DEBUG",
    )
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [RESYNC, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, proc)
            yield base, log_path
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def cli(tmp_path: Path, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    if token is not None:
        env["ADMIN_TOKEN"] = token
    return subprocess.run(
        [RESYNC, *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def redis_stats(base: str) -> dict[str, int]:
    stats: dict[str, int] = httpx.get(f"{base}/pools", timeout=5).json()["pools"]["redis"]
    return stats


def test_resync_drain_replaces_the_connections_of_a_running_service(
    admin_service: tuple[str, Path], tmp_path: Path
) -> None:
    base, log = admin_service
    before = redis_stats(base)
    done = cli(tmp_path, "drain", "redis", "--url", base, "--interval", "0.2")
    assert done.returncode == 0, done.stderr
    assert "pool 'redis': 2 connection(s) replaced" in done.stdout
    after = redis_stats(base)
    assert after["connection_closures"] - before["connection_closures"] == 2
    assert after["connection_creations"] - before["connection_creations"] == 2
    assert after["connection_errors"] == before["connection_errors"]
    resized = cli(tmp_path, "resize", "database", "--min", "1", "--max", "6", "--url", base)
    assert resized.returncode == 0, resized.stderr
    assert httpx.get(f"{base}/pools", timeout=5).json()["pools"]["database"]["max_size"] == 6
    assert TOKEN not in log.read_text(errors="replace")


def test_resync_drain_is_refused_without_the_right_token(
    admin_service: tuple[str, Path], tmp_path: Path
) -> None:
    base, log = admin_service
    before = redis_stats(base)
    token_file = tmp_path / "token"
    token_file.write_text(WRONG + "\n")
    wrong = cli(tmp_path, "drain", "redis", "--url", base, "--token-file", str(token_file))
    assert wrong.returncode == 1
    assert "403" in wrong.stderr and "refused the admin token" in wrong.stderr
    missing = cli(tmp_path, "drain", "redis", "--url", base, token=None)
    assert missing.returncode == 2 and "ADMIN_TOKEN" in missing.stderr
    unknown = cli(tmp_path, "drain", "nope", "--url", base)
    assert unknown.returncode == 1 and "404" in unknown.stderr
    assert redis_stats(base)["connection_closures"] == before["connection_closures"]
    output = wrong.stdout + wrong.stderr + missing.stdout + missing.stderr
    text = log.read_text(errors="replace")
    for secret in (TOKEN, WRONG):
        assert secret not in output and secret not in text
    assert "refused: wrong token" in text


def test_resync_drain_says_when_no_service_answers(tmp_path: Path) -> None:
    result = cli(tmp_path, "drain", "redis", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "no resync service answered" in result.stderr
