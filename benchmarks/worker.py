"""One part of the suite on one event loop, in a process of its own.

    python -m benchmarks.worker --part pg --loop uvloop --rounds 3 --duration 1 --out rows.json

Parts: ``pg``, ``redis``, ``http``, ``lease`` (no I/O), ``service`` (end to
end), ``rss`` (in-memory, SQLite and the three PostgreSQL lease kinds,
:mod:`benchmarks.rss_leases`) and ``roundtrips`` (protocol messages per
PostgreSQL lease, :mod:`benchmarks.pg_roundtrips`) and ``overload`` (goodput
at 1x-3x capacity, :mod:`benchmarks.overload`). Rows (for ``rss`` the
drift records, for ``roundtrips`` the counts) are written to ``--out`` as
JSON; progress goes to stdout as ``@@bench`` events (see
:mod:`benchmarks.harness`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

PARTS = ("pg", "redis", "http", "lease", "service", "rss", "roundtrips", "overload")


def _runner(loop: str) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    if loop == "uvloop":
        import uvloop

        return uvloop.run
    return asyncio.run


def run_part(part: str, loop: str, rounds: int, duration: float, args: argparse.Namespace) -> Any:
    """Run ``part``; the rows as dicts (``rss``: its drift records)."""
    run = _runner(loop)
    if part == "pg":
        from benchmarks import workloads_pg

        rows = run(workloads_pg.run(loop, rounds, duration))
    elif part == "redis":
        from benchmarks import workloads_redis_http

        rows = run(workloads_redis_http.run_redis(loop, rounds, duration))
    elif part == "http":
        from benchmarks import workloads_redis_http

        rows = run(workloads_redis_http.run_http(loop, rounds, duration))
    elif part == "lease":
        from benchmarks import workloads_memory

        rows = run(workloads_memory.run_lease(loop, rounds, duration))
    elif part == "service":
        from benchmarks import workloads_service

        rows = workloads_service.run_service(loop, rounds, duration)
    elif part == "rss":
        from benchmarks import rss_leases, workloads_memory

        async def rss() -> list[dict[str, Any]]:
            found = await workloads_memory.run_rss(args.rss_leases, args.rss_db_leases)
            if args.rss_pg_leases:
                count = args.rss_pg_leases
                step = max(1, count // 10)
                found += await rss_leases.run_pg(count, step=step, budget=args.rss_budget)
            return found

        return run(rss())
    elif part == "overload":
        from benchmarks import overload

        return run(overload.run_all(duration=duration))
    elif part == "roundtrips":
        from benchmarks import pg_roundtrips

        return run(pg_roundtrips.measure_all(args.roundtrip_leases))
    else:
        raise ValueError(f"unknown part {part!r}")
    return [row.as_dict() for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=PARTS, required=True)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per round")
    parser.add_argument("--rss-leases", type=int, default=1_000_000)
    parser.add_argument("--rss-db-leases", type=int, default=1_000_000)
    parser.add_argument(
        "--rss-pg-leases", type=int, default=1_000_000, help="per PostgreSQL lease kind"
    )
    parser.add_argument(
        "--rss-budget", type=float, default=120.0, help="seconds per PostgreSQL RSS row"
    )
    parser.add_argument("--roundtrip-leases", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = run_part(args.part, args.loop, args.rounds, args.duration, args)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
