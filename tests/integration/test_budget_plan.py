"""`resync plan`: the connection budget of a deployment, from settings, servers and flags.

The limits are read from the shared PostgreSQL and Redis when they are the
configured servers, and come from flags when a server cannot be reached.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from resync.core.pools.manager.budget import BudgetLine, PoolSizing, plan_budget, read_server_limits
from resync.settings import Settings
from tests.helpers.net import free_port

RESYNC = str(Path(sys.executable).with_name("resync"))


def plan(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RESYNC, "plan", *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def by_pool(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {line["pool"]: line for line in json.loads(result.stdout)["pools"]}


def test_sizing_follows_hikaricps_formula_and_shares_it_over_the_fleet() -> None:
    sizing = PoolSizing(core_count=8, spindles=1, processes=4)
    assert sizing.connections == 17
    assert sizing.per_process == 5  # ceil(17 / 4)
    text = "\n".join(sizing.explain(configured_max=10))
    assert "(8 x 2) + 1 = 17" in text and "DB_POOL_MAX_SIZE ~ 5" in text
    assert "PgBouncer" in text  # 10 per process is more than the server can use
    assert "PgBouncer" not in "\n".join(sizing.explain(configured_max=5))
    assert PoolSizing(core_count=2, spindles=0, processes=50).per_process == 1


def test_budget_line_says_how_many_replicas_fit() -> None:
    line = BudgetLine("database", "database", 8, 11, 97, workers=1, source="flag")
    assert (line.total, line.headroom, line.over, line.max_replicas) == (88, 9, False, 12)
    two_workers = BudgetLine("database", "database", 8, 22, 97, workers=2)
    assert two_workers.over and two_workers.max_replicas == 6
    assert BudgetLine("tws_http", "http", 20, 11, None).max_replicas is None


def test_plan_covers_every_enabled_pool_for_replicas_times_workers() -> None:
    settings = Settings(
        _env_file=None,
        DB_POOL_MAX_SIZE=5,
        REDIS_URL="redis://127.0.0.1:6379/0",
        REDIS_POOL_MAX_SIZE=3,
        TWS_BASE_URL="http://127.0.0.1:9",
    )
    lines = {
        line.pool: line
        for line in plan_budget(settings, 4, 2, {"database": (50, "flag"), "redis": (10, "server")})
    }
    assert set(lines) == {"database", "redis", "tws_http"}
    assert lines["database"].total == 40 and not lines["database"].over
    assert lines["redis"].total == 24 and lines["redis"].over
    assert lines["tws_http"].server_limit is None and lines["tws_http"].source == ""


@pytest.mark.postgres
@pytest.mark.redis
async def test_limits_are_read_from_the_configured_servers(pg_url: str, redis_url: str) -> None:
    settings = Settings(_env_file=None, DATABASE_URL=pg_url, REDIS_URL=redis_url)
    limits = await read_server_limits(settings, timeout=5.0)
    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
    try:
        expected_pg = await conn.fetchval(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
        )
    finally:
        await conn.close()
    admin = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        expected_redis = int((await admin.config_get("maxclients"))["maxclients"])
    finally:
        await admin.aclose()
    assert limits == {"database": expected_pg, "redis": expected_redis}


@pytest.mark.postgres
def test_resync_plan_reads_the_servers_and_flags_win(tmp_path: Path, pg_url: str) -> None:
    env = {"DATABASE_URL": pg_url, "DB_POOL_MAX_SIZE": "8", "REPLICAS": "3"}
    read = plan(tmp_path, env, "--json")
    assert read.returncode == 0, read.stderr
    database = by_pool(read)["database"]
    assert database["limit_source"] == "server" and database["total"] == 24
    flagged = plan(tmp_path, env, "--json", "--db-max-connections=20", "--db-reserved=0")
    assert flagged.returncode == 1  # 24 > 20
    assert by_pool(flagged)["database"]["limit_source"] == "flag"
    assert by_pool(flagged)["database"]["fits"] is False


def test_an_unreachable_server_leaves_the_limit_to_flags(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": f"postgresql+asyncpg://u:Plan-Pw-5150@127.0.0.1:{free_port()}/db",
        "DB_POOL_CONNECT_TIMEOUT": "1",
        "REPLICAS": "2",
    }
    unknown = plan(tmp_path, env, "--json")
    assert unknown.returncode == 0
    assert by_pool(unknown)["database"]["server_limit"] is None
    text = plan(tmp_path, env, "--db-max-connections=100", "--db-cores=4", "--db-spindles=0")
    assert text.returncode == 0
    assert "(4 x 2) + 0 = 8" in text.stdout
    assert "97 (flag)" in text.stdout
    assert "Plan-Pw-5150" not in text.stdout + text.stderr
