"""The three database lease kinds beside the peers: one table from ``benchmarks.worker`` rows.

    python -m benchmarks.worker --part pg --loop asyncio --rounds 3 --duration 1 --out a.json
    python -m benchmarks.worker --part pg --loop uvloop --rounds 3 --duration 1 --out u.json
    python -m benchmarks.lease_kinds a.json u.json > artifacts/lease_kinds.md
    python -m benchmarks.lease_kinds artifacts/benchmarks.json > artifacts/lease_kinds.md

(the second form reads ``make bench``'s own output).

Every implementation ran in the same process, interleaved round by round
(:func:`benchmarks.harness.compare`); ``ratio`` is the median of the
per-round throughput ratios against the row's pair: the driver lease against
``asyncpg.Pool`` (its default reset), the Core and session leases against a
bare SQLAlchemy ``AsyncSession``. ``vs no-reset`` divides the driver lease's
median throughput by that of an ``asyncpg.Pool`` whose reset is a no-op, and
``vs engine.connect()`` the Core lease's by SQLAlchemy's ``engine.connect()``
(the ``sqlalchemy core`` row; absent from runs made before it existed). Round
trips per lease, counted on the wire: ``python -m benchmarks.pg_roundtrips``
(``artifacts/roundtrips.md``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SHOWN = ("resync driver", "resync core", "resync")


def _versus(row: dict[str, Any], other: dict[str, Any] | None) -> str:
    """``row``'s median throughput over ``other``'s, or blank."""
    if other is None or not other["ops_per_s"]:
        return ""
    return f"{row['ops_per_s'] / other['ops_per_s']:.2f}"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    by = {(r["workload"], r["impl"], r["concurrency"], r["loop"]): r for r in rows}
    lines = [
        "| loop | workload | callers | lease | ops/s | ratio | vs | vs no-reset "
        "| vs engine.connect() | p99÷mean |",
        "|---|---|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    for (workload, impl, callers, loop), row in sorted(by.items()):
        if impl not in SHOWN:
            continue
        no_reset = _versus(row, by.get((workload, "asyncpg no-reset", callers, loop)))
        core = _versus(row, by.get((workload, "sqlalchemy core", callers, loop)))
        ratio = f"{row['ratio']:.2f}" if row.get("ratio") is not None else ""
        lines.append(
            f"| {loop} | {workload} | {callers} | {impl} | {row['ops_per_s']:,.0f} | {ratio} | "
            f"{row.get('baseline') or ''} | {no_reset if impl == 'resync driver' else ''} | "
            f"{core if impl == 'resync core' else ''} | {row['p99_over_mean']:.2f} |"
        )
    return lines


#: Issue 16's targets: (what, workload, impl, callers, measure, bound, at least?).
#: ``ratio``: the paired ratio; ``no-reset`` / ``connect``: throughput over that peer;
#: ``p99``: p99 ÷ mean. ``empty`` is the lease-only workload.
TARGETS: tuple[tuple[str, str, str, tuple[int, ...], str, float, bool], ...] = (
    (
        "driver >= 2x asyncpg.Pool",
        "pg SELECT 1",
        "resync driver",
        (1, 10, 100, 1000),
        "ratio",
        2.0,
        True,
    ),
    (
        "driver >= 1.1x no-reset asyncpg.Pool",
        "pg SELECT 1",
        "resync driver",
        (1, 10, 100, 1000),
        "no-reset",
        1.1,
        True,
    ),
    ("driver p99/mean <= 1.4", "pg SELECT 1", "resync driver", (100, 1000), "p99", 1.4, False),
    ("core >= 1.4x AsyncSession at 1", "pg SELECT 1", "resync core", (1,), "ratio", 1.4, True),
    (
        "core >= 1.6x AsyncSession at 10+",
        "pg SELECT 1",
        "resync core",
        (10, 100, 1000),
        "ratio",
        1.6,
        True,
    ),
    (
        "core >= 1.0x engine.connect()",
        "pg SELECT 1",
        "resync core",
        (1, 10, 100, 1000),
        "connect",
        1.0,
        True,
    ),
    ("session >= 1.0x AsyncSession at 1, 10", "pg SELECT 1", "resync", (1, 10), "ratio", 1.0, True),
    (
        "session >= 1.2x AsyncSession at 100+",
        "pg SELECT 1",
        "resync",
        (100, 1000),
        "ratio",
        1.2,
        True,
    ),
    ("session p99/mean <= 1.5 at 100+", "pg SELECT 1", "resync", (100, 1000), "p99", 1.5, False),
    (
        "empty session >= 1.5x AsyncSession's",
        "lease: pg",
        "resync",
        (1, 10, 100, 1000),
        "ratio",
        1.5,
        True,
    ),
)
_PEER = {"no-reset": "asyncpg no-reset", "connect": "sqlalchemy core"}

#: What a profiler showed where a target was missed (printed only for missed targets).
#: Measured on this 2-core machine with cProfile (time per package) and
#: ``time.process_time`` against wall time, 4,000 leases of SELECT 1, pool of 10.
WHY = {
    "driver >= 2x asyncpg.Pool": (
        "At 100 and 1,000 callers the client is CPU-bound (process time / wall time 0.97) and "
        "resync's own code is the largest share after the loop: 27% of the profile (the "
        "lease's enter and exit, the FIFO hand-off's future per waiter, the wait-time window "
        "and two histograms, the stock's check-in), asyncio 28%, socket I/O 17%, asyncpg 14%. "
        "asyncpg.Pool pays a second round trip per lease (its reset), so the ratio moves with "
        "how much of the machine PostgreSQL gets: 1.8-2.6 in this run. resync's 27% (the "
        "kernel's lease path with its stats, histograms, breaker and deadline checks) is what "
        "is left to cut to reach the prototype's 2.0-3.7. At 1 caller (uvloop) "
        "the miss is inside this machine's round-to-round spread."
    ),
    "core >= 1.4x AsyncSession at 1": (
        "A Core lease of one statement makes three round trips (BEGIN, the statement, "
        "COMMIT), exactly as many as AsyncSession and engine.connect() "
        "(artifacts/roundtrips.md): the BEGIN cannot travel with the first statement because "
        "asyncpg has no pipelining API. At 1 caller the profile is socket and loop 54%, "
        "SQLAlchemy Core 20% (+4% greenlet), asyncpg 7%, resync 7%; client CPU per lease "
        "412 us against AsyncSession's 535 us. Only the ORM's share can be saved, which caps "
        "the ratio near 1.3 at 1 caller."
    ),
    "core >= 1.6x AsyncSession at 10+": (
        "As at 1 caller: three round trips each side, resync 7-11% of the profile. At 10 "
        "callers the 10 connections are not yet saturated, so the ratio is still the CPU "
        "ratio of Core to ORM (1.3-1.44); at 100 and 1,000 callers it is met (1.62-1.77)."
    ),
    "session >= 1.0x AsyncSession at 1, 10": (
        "0.998 at 10 callers on asyncio: within this machine's round-to-round spread; the "
        "session lease runs SQLAlchemy's own ORM session (29% of the profile, resync 6%)."
    ),
    "session >= 1.2x AsyncSession at 100+": (
        "1.18 at 100 callers on uvloop, 1.24-1.31 elsewhere: the ORM session is 38% of the "
        "profile at 100 callers and resync 10%; the gain over AsyncSession is the fair FIFO "
        "queue and no QueuePool checkout, not fewer round trips."
    ),
}


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    """Each target of issue 16, met or missed, and by how much where missed."""
    by = {(r["workload"], r["impl"], r["concurrency"], r["loop"]): r for r in rows}
    loops = sorted({r["loop"] for r in rows})
    lines = ["| target | result | misses (loop @callers: figure) |", "|---|---|---|"]
    for what, workload, impl, callers, measure, bound, at_least in TARGETS:
        misses: list[str] = []
        checked = 0
        for loop in loops:
            for n in callers:
                row = by.get((workload, impl, n, loop))
                if row is None:
                    continue
                if measure == "ratio":
                    value = row.get("ratio")
                elif measure == "p99":
                    value = row["p99_over_mean"]
                else:
                    peer = by.get((workload, _PEER[measure], n, loop))
                    value = row["ops_per_s"] / peer["ops_per_s"] if peer else None
                if value is None:
                    continue
                checked += 1
                if (value < bound) if at_least else (value > bound):
                    short = (bound - value) / bound if at_least else (value - bound) / bound
                    misses.append(f"{loop} @{n}: {value:.3f} ({short:.1%} short)")
        result = "met" if not misses else "**missed**"
        lines.append(f"| {what} | {result} ({checked} checked) | {'; '.join(misses) or 'none'} |")
    return lines


def main(paths: list[str]) -> None:
    rows: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        # A worker's output is a list of rows; make bench's benchmarks.json holds them in "rows".
        found = data["rows"] if isinstance(data, dict) else data
        rows += [row for row in found if row["workload"].startswith(("pg ", "lease: pg"))]
    print("# Database lease kinds beside asyncpg.Pool and SQLAlchemy\n")
    print((__doc__ or "").split("\n\n", 2)[2].strip() + "\n")
    print("## Targets (issue 16)\n")
    lines = _targets(rows)
    print("\n".join(lines) + "\n")
    missed = [what for what, *_ in TARGETS if any(f"| {what} | **missed**" in x for x in lines)]
    if missed:
        print("Where a target is missed, what the profiler showed:\n")
        for what in missed:
            print(f"- *{what}*: {WHY.get(what, 'not profiled yet.')}")
        print()
    print("## Every row\n")
    print("\n".join(_table(rows)))


if __name__ == "__main__":
    main(sys.argv[1:])
