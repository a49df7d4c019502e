"""``SELECT 1`` through a bare SQLAlchemy engine beside the same through resync's pool.

- bare: ``create_async_engine(url, pool_size=10, max_overflow=0)`` and
  ``async with Session.begin() as s: await s.execute(text("SELECT 1"))`` -- the
  idiomatic SQLAlchemy unit of work, which commits on a clean exit and rolls
  back on an error, exactly what a resync lease does.
- resync: ``async with pool.get_connection() as s: await s.execute(...)`` on a
  ``DatabaseConnectionPool`` with ``max_size=10`` (and ``min_size=10``, so both
  sides start with ten open connections).
- bare-rollback (reference row, no ratio): ``async with Session() as s``,
  which ends each transaction with the rollback SQLAlchemy's pool issues on
  return instead of a commit.

Concurrency 1, 10, 100 and 1,000 closed-loop workers against PostgreSQL
(asyncpg); rounds at 100 and 1,000 last 1.5x and 3x longer, so the start-up
(every worker asking at once) is a small part of the measured latencies.
Rounds alternate between implementations so drift (CPU frequency, other
processes) hits all of them; the median round by throughput is reported.
Targets: ratio (resync ops/s / bare ops/s) >= 0.97 everywhere; resync
p99 / mean <= 1.3 at 1,000.

Run: ``python -m benchmarks.bench_db`` (``--quick`` for a smoke run).
Needs PostgreSQL at RESYNC_TEST_PG_URL (default 127.0.0.1:5432, database
``test``). Writes ``artifacts/bench_db.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from benchmarks.common import RunResult, measure, write_report
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool

CONCURRENCY = (1, 10, 100, 1000)
POOL_SIZE = 10
RATIO_TARGET = 0.97
P99_MEAN_TARGET = 1.3
PG_URL = os.environ.get("RESYNC_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
WORKLOAD = "SELECT 1"
SELECT_1 = text("SELECT 1")
# Long enough that nobody times out at 1,000 workers on a loaded machine.
TIMEOUT = 120.0
# Every worker starts at once, so the first pass through the queue has short
# waits that are not the steady state; longer rounds at high concurrency keep
# that start-up a small part of what is measured.
DURATION_FACTOR = {1: 1.0, 10: 1.0, 100: 1.5, 1000: 3.0}

Op = Callable[[], Awaitable[object]]


async def compare(ops: dict[str, Op], *, rounds: int, duration: float) -> list[RunResult]:
    """Alternate single rounds of each implementation; keep each one's median round."""
    results: list[RunResult] = []
    for concurrency in CONCURRENCY:
        runs: dict[str, list[RunResult]] = {impl: [] for impl in ops}
        order = list(ops)
        for round_no in range(rounds):
            for impl in order if round_no % 2 == 0 else reversed(order):
                runs[impl].append(
                    await measure(
                        WORKLOAD,
                        impl,
                        ops[impl],
                        concurrency=concurrency,
                        rounds=1,
                        duration=duration * DURATION_FACTOR[concurrency],
                    )
                )
        for impl, impl_runs in runs.items():
            impl_runs.sort(key=lambda r: r.ops_per_s)
            median = impl_runs[len(impl_runs) // 2]
            median.rounds = rounds
            results.append(median)
            print(
                f"{impl:14} c={concurrency:<5} {median.ops_per_s:9,.0f} ops/s  "
                f"p50 {median.p50 * 1e3:8.3f} ms  p99 {median.p99 * 1e3:8.3f} ms  "
                f"p99/mean {median.p99_over_mean:5.2f}  errors {median.errors}",
                flush=True,
            )
    return results


async def run(rounds: int, duration: float) -> list[RunResult]:
    engine = create_async_engine(PG_URL, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=TIMEOUT)
    session_factory = async_sessionmaker(engine, expire_on_commit=False)
    config = ConnectionPoolConfig(
        pool_name="bench-db",
        min_size=POOL_SIZE,
        max_size=POOL_SIZE,
        connection_timeout=TIMEOUT,
    )
    pool = DatabaseConnectionPool(config, PG_URL)
    await pool.initialize()

    async def bare() -> object:
        async with session_factory.begin() as session:
            return (await session.execute(SELECT_1)).scalar()

    async def bare_rollback() -> object:
        async with session_factory() as session:
            return (await session.execute(SELECT_1)).scalar()

    async def resync() -> object:
        async with pool.get_connection() as session:
            return (await session.execute(SELECT_1)).scalar()

    # Open the bare side's ten connections too, so neither side pays for connecting.
    await asyncio.gather(*(bare() for _ in range(POOL_SIZE)))
    try:
        return await compare(
            {"bare": bare, "resync": resync, "bare-rollback": bare_rollback},
            rounds=rounds,
            duration=duration,
        )
    finally:
        await pool.close()
        await engine.dispose()


def verdicts(results: list[RunResult]) -> list[str]:
    """One line per target, with the rows that miss it."""
    by_key = {(r.concurrency, r.impl): r for r in results}
    misses, ratios = [], []
    for concurrency in CONCURRENCY:
        ours, base = by_key[(concurrency, "resync")], by_key[(concurrency, "bare")]
        ratio = ours.ops_per_s / base.ops_per_s if base.ops_per_s else 0.0
        ratios.append(f"{concurrency}: {ratio:.3f}")
        if ratio < RATIO_TARGET:
            misses.append(f"c={concurrency}: {ratio:.3f}")
    reference = ", ".join(
        f"{c}: {by_key[(c, 'resync')].ops_per_s / by_key[(c, 'bare-rollback')].ops_per_s:.3f}"
        for c in CONCURRENCY
        if by_key[(c, "bare-rollback")].ops_per_s
    )
    top = max(CONCURRENCY)
    ours, base = by_key[(top, "resync")], by_key[(top, "bare")]
    verdict = "met" if ours.p99_over_mean <= P99_MEAN_TARGET else "MISSED"
    return [
        f"- ratio >= {RATIO_TARGET} ({', '.join(ratios)}): "
        + ("met in every row" if not misses else "MISSED in " + "; ".join(misses)),
        f"- p99/mean <= {P99_MEAN_TARGET} at {top}: {verdict}, resync "
        f"{ours.p99_over_mean:.2f} (bare {base.p99_over_mean:.2f})",
        f"- for reference, resync / bare-rollback ops/s: {reference}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--duration", type=float, default=1.0, help="seconds per round (x3 at 1,000)"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 0.5 s; no report")
    args = parser.parse_args()
    rounds, duration = (1, 0.5) if args.quick else (args.rounds, args.duration)
    load_before = os.getloadavg()[0]
    results = asyncio.run(run(rounds, duration))
    lines = verdicts(results)
    print("\n".join(lines))
    if args.quick:
        return
    notes = [
        "Targets:",
        *lines,
        "",
        f"Both sides cap connections at {POOL_SIZE} and start with {POOL_SIZE} open; "
        "`bare` commits each unit of work (`Session.begin()`), as a resync lease does. "
        "`bare-rollback` (`async with Session()`, rolled back on return) is shown for "
        "reference only: it skips the commit, and with it SQLAlchemy's heavier commit path; "
        "profiled at 10 workers it and a resync lease make about the same Python work per "
        "operation (~530 and ~520 function calls), so their ratio at 1-10 workers is "
        "run-to-run noise around 1. PostgreSQL runs on the same machine, so client and "
        f"server share the CPUs (1-minute load average {load_before:.2f} when the run "
        "started); rows a few percent apart are within run-to-run noise.",
        "",
        "Why resync can be faster than the engine it wraps: resync keeps its connections "
        "itself and binds each session to a connection it already holds, so a lease skips "
        "SQLAlchemy's QueuePool checkout and check-in (the `Connection` object, the pool "
        "events, the reset on return); the transaction's BEGIN is sent at checkout instead "
        "of with the first statement, which is the same round trip, and it doubles as the "
        "liveness check. With more workers than connections, resync's gate serves waiters "
        "strictly in arrival order, while SQLAlchemy's queue lets a newcomer take a "
        "just-returned connection (`get_nowait`) ahead of callers already waiting, which "
        "is the long tail in its p99.",
    ]
    path = write_report(
        "bench_db",
        "resync database pool vs bare SQLAlchemy (asyncpg), SELECT 1",
        results,
        ours="resync",
        baseline="bare",
        notes=notes,
        extra={
            "targets": {"ratio": RATIO_TARGET, "p99_over_mean_at_1000": P99_MEAN_TARGET},
            "load_average_at_start": load_before,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
