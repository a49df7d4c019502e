"""The benchmark suite's plumbing: a tiny workload through the harness, report and plots.

No timing is asserted: only that rows, ratios, verdicts and files come out.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from benchmarks import plots, report
from benchmarks.harness import Row, compare
from benchmarks.workloads_service import parse_wrk
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.testing import InMemoryPool

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:8000
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.50ms  456.00us  10.00ms   90.00%
    Req/Sec     6.10k   300.00     6.50k    80.00%
  Latency Distribution
     50%    1.20ms
     75%    1.60ms
     90%    2.00ms
     99%    3.00ms
  6100 requests in 1.00s, 1.23MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 3
Requests/sec:   6100.00
Transfer/sec:      1.23MB
"""


async def _tiny_rows() -> list[Row]:
    pool = InMemoryPool(ConnectionPoolConfig(pool_name="bench-test", min_size=2, max_size=2))
    await pool.initialize()
    semaphore = asyncio.Semaphore(2)

    async def via_pool() -> None:
        async with pool.get_connection():
            await asyncio.sleep(0)

    async def via_semaphore() -> None:
        async with semaphore:
            await asyncio.sleep(0)

    try:
        return await compare(
            "lease",
            "lease: test",
            {"semaphore": via_semaphore, "resync": via_pool},
            loop="asyncio",
            rounds=2,
            duration=0.05,
            pairs={"resync": "semaphore"},
            concurrency=(1, 100),
            warmup=0.02,
        )
    finally:
        await pool.close()


async def test_harness_rows_carry_medians_ratios_and_no_errors() -> None:
    rows = await _tiny_rows()
    assert [(r.impl, r.concurrency) for r in rows] == [
        ("semaphore", 1),
        ("resync", 1),
        ("semaphore", 100),
        ("resync", 100),
    ]
    for row in rows:
        assert row.ops_per_s > 0 and row.errors == 0 and row.rounds == 2
        assert row.p50_ms <= row.p99_ms
        assert len(row.extra["round_ops_per_s"]) == 2
    ours = [r for r in rows if r.impl == "resync"]
    assert all(r.baseline == "semaphore" and r.ratio is not None for r in ours)


async def test_report_and_plots_are_written(tmp_path: Path) -> None:
    rows = await _tiny_rows()
    rss = [
        {
            "pool": "resync InMemoryPool",
            "leases": 1000,
            "warmup_leases": 10,
            "rss_after_warmup_mb": 50.0,
            "rss_at_end_mb": 50.5,
            "drift_percent": 1.0,
            "checkpoints_mb": [50.0, 50.5],
            "leases_per_s": 1000.0,
            "met": True,
        }
    ]
    meta = {
        "when": "now",
        "platform": "test",
        "python": "3",
        "cpus": 2,
        "load_start": 0.5,
        "load_end": 0.6,
        "loops": ["asyncio"],
        "rounds": 2,
        "duration": 0.05,
        "service_duration": 1,
        "versions": {"resync": "0"},
        "total_seconds": 1.0,
    }
    written = plots.plot_all(rows, tmp_path)
    assert sorted(p.name for p in written) == [
        "benchmarks_lease_p99.png",
        "benchmarks_lease_throughput.png",
    ]
    assert all(p.stat().st_size > 1000 for p in written)
    path = report.write(
        tmp_path,
        rows=rows,
        rss=rss,
        plan=[("lease: test", ("semaphore", "resync"))],
        meta=meta,
        plots=written,
        failures=[],
    )
    text = path.read_text()
    assert "## Targets" in text and "| lease: test | resync | asyncio | 100 |" in text
    assert "benchmarks_lease_throughput.png" in text
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert len(data["rows"]) == 4
    assert {v["key"] for v in data["targets"]} == {"ratio", "tail", "errors", "rss"}
    assert next(v for v in data["targets"] if v["key"] == "rss")["met"] is True


def test_wrk_output_is_parsed() -> None:
    sample = parse_wrk(WRK_OUTPUT, 1)
    assert sample.ops == 6100
    assert sample.errors == 6
    assert sample.mean == pytest.approx(1.5e-3)
    assert sample.p50 == pytest.approx(1.2e-3)
    assert sample.p99 == pytest.approx(3e-3)
