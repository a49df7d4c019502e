"""`resync bench`: figures for the configured pools; no timing is asserted."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from resync.benchmark import bench_pool
from resync.cli import app
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.testing import InMemoryPool


async def test_bench_pool_measures_lease_and_round_trip_at_each_concurrency() -> None:
    pool = InMemoryPool(ConnectionPoolConfig(pool_name="bench-cli", min_size=1, max_size=2))
    await pool.initialize()
    seen: list[str] = []
    try:
        results = await bench_pool(
            pool,
            concurrency=(1, 5),
            duration=0.05,
            warmup=0.01,
            on_result=lambda r: seen.append(f"{r.operation}@{r.concurrency}"),
        )
    finally:
        await pool.close()
    assert seen == ["lease@1", "lease@5", "round trip@1", "round trip@5"]
    for result in results:
        assert result.pool == "bench-cli" and result.backend == "memory"
        assert result.ops > 0 and result.errors == 0
        assert 0 < result.p50 <= result.p99
    assert pool.stats.active_connections == 0


def test_bench_command_prints_json_for_the_configured_pools() -> None:
    env = {"DATABASE_URL": "sqlite+aiosqlite:///:memory:", "REDIS_URL": "", "TWS_BASE_URL": ""}
    result = CliRunner().invoke(
        app, ["bench", "--duration", "0.1", "--concurrency", "1,2", "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["pool"], r["operation"], r["concurrency"]) for r in rows] == [
        ("database", "lease", 1),
        ("database", "lease", 2),
        ("database", "round trip", 1),
        ("database", "round trip", 2),
    ]
    assert all(r["ops_per_s"] > 0 and r["errors"] == 0 for r in rows)


def test_bench_command_rejects_a_bad_concurrency() -> None:
    result = CliRunner().invoke(app, ["bench", "--concurrency", "0"])
    assert result.exit_code == 2


def test_bench_command_refuses_an_unknown_pool_naming_the_configured_ones() -> None:
    env = {"DATABASE_URL": "sqlite+aiosqlite:///:memory:", "REDIS_URL": "", "TWS_BASE_URL": ""}
    result = CliRunner().invoke(app, ["bench", "--pool", "nosuch", "--duration", "0.1"], env=env)
    assert result.exit_code == 2
    assert "no pool named 'nosuch'" in result.output
    assert "configured pools: database" in result.output


def test_serve_refuses_a_port_out_of_range_like_the_port_setting() -> None:
    env = {"DATABASE_URL": "sqlite+aiosqlite:///:memory:", "REDIS_URL": "", "TWS_BASE_URL": ""}
    result = CliRunner().invoke(app, ["serve", "--port", "99999"], env=env)
    assert result.exit_code == 2
    shown = " ".join(re.sub(r"\x1b\[[0-9;]*m|[│╭╮╰╯─]", " ", result.output).split())
    assert "Invalid value for '--port'" in shown and "65535" in shown, shown
    assert "serving on" not in shown
