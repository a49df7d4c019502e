"""The benchmark's counting proxy (``benchmarks/pg_roundtrips.py``) counts what it should.

Against the shared PostgreSQL: a connection's start-up is counted apart, a
hot prepared ``fetchval('SELECT 1')`` is exactly one ReadyForQuery (one Sync,
no Query), a simple-protocol ``execute`` one Query, a transaction three
exchanges; the framing survives messages split across reads; and the report
shows the counts (a column, a section, a plot) and judges them.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from benchmarks import plots, report
from benchmarks.harness import Row
from benchmarks.pg_roundtrips import CountingProxy, WireParser, proxied_url

pytestmark = pytest.mark.postgres


async def test_the_framing_survives_a_stream_cut_anywhere() -> None:
    startup = struct.pack("!ii", 8 + 10, 196608) + b"user\0pg\0\0\0"
    query = b"Q" + struct.pack("!i", 4 + 9) + b"SELECT 1\0"
    sync = b"S" + struct.pack("!i", 4)
    stream = startup + query + sync
    parser = WireParser(typed=False)
    seen = [kind for byte in stream for kind, _ in parser.feed(bytes([byte]))]
    assert seen == ["", "Q", "S"]
    assert parser.pending() == b""


async def test_one_hot_select_is_one_round_trip(pg_url: str) -> None:
    async with CountingProxy(("127.0.0.1", 5432)) as proxy:
        dsn = proxied_url(pg_url, proxy.port).replace("+asyncpg", "")
        conn = await asyncpg.connect(dsn)  # asks for SSL first: the proxy says no
        try:
            assert (proxy.counts.connections, proxy.counts.startups) == (1, 1)
            assert proxy.counts.ready == 0  # the start-up's ReadyForQuery is not an exchange
            assert await conn.fetchval("SELECT 1") == 1  # cold: Parse/Describe, then Bind
            before = proxy.counts.copy()
            assert await conn.fetchval("SELECT 1") == 1
            hot = proxy.counts.since(before)
            assert (hot.ready, hot.to_server["S"], hot.to_server["Q"], hot.turns) == (1, 1, 0, 1)

            before = proxy.counts.copy()
            await conn.execute("SELECT 1")  # no arguments: the simple protocol
            simple = proxy.counts.since(before)
            assert (simple.ready, simple.to_server["Q"], simple.to_server["S"]) == (1, 1, 0)

            before = proxy.counts.copy()
            async with conn.transaction():
                await conn.execute("SELECT 1")
            assert proxy.counts.since(before).ready == 3  # BEGIN, SELECT 1, COMMIT
        finally:
            await conn.close()


async def test_the_report_shows_the_counts_and_judges_them(tmp_path: Path) -> None:
    def record(workload: str, impl: str, trips: float) -> dict[str, Any]:
        return {
            "workload": workload,
            "impl": impl,
            "leases": 200,
            "round_trips_per_lease": trips,
            "query_per_lease": 0.0,
            "sync_per_lease": trips,
            "parse_per_lease": 0.0,
            "turns_per_lease": trips,
            "new_connections": 0,
            "idle_round_trips": 0,
        }

    trips = [record("pg SELECT 1", "resync driver", 1.0), record("lease: pg", "resync", 2.0)]
    png = plots.plot_roundtrips(trips, tmp_path)
    meta = {"when": "now", "platform": "test", "python": "3", "cpus": 2, "load_start": 0.0}
    meta |= {"load_end": 0.0, "loops": ["asyncio"], "rounds": 1, "duration": 0.1}
    meta |= {"service_duration": 1, "versions": {}, "total_seconds": 1.0}
    row = Row("lease", "lease: pg", "resync", 1, "asyncio", 10.0, 1.0, 1.0, 1.0, 1.0, 0, 1)
    path = report.write(
        tmp_path, rows=[row], rss=[], plan=[], meta=meta, plots=[png], failures=[], roundtrips=trips
    )
    text = path.read_text()
    assert "| pg SELECT 1 | resync driver | **1** |" in text  # the section
    assert "| lease: pg | resync | asyncio | 1 | 10 |" in text and "| round trips |" in text
    assert text.count("\n| lease: pg | resync | asyncio |") == 1
    assert next(line for line in text.splitlines() if "| 1 | 10 |" in line).endswith("| 2 |")
    assert png.name in text and png.stat().st_size > 1000
    verdict = next(v for v in report.verdicts([], [], trips) if v["key"] == "roundtrips")
    assert (verdict["met"], verdict["checked"]) == (False, 2)
    assert verdict["misses"] == ["lease: pg / resync: 2 (target 0)"]
