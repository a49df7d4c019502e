"""The three database lease kinds beside the peers: one table from ``benchmarks.worker`` rows.

    python -m benchmarks.worker --part pg --loop asyncio --rounds 3 --duration 1 --out a.json
    python -m benchmarks.worker --part pg --loop uvloop --rounds 3 --duration 1 --out u.json
    python -m benchmarks.lease_kinds a.json u.json > artifacts/lease_kinds.md
    python -m benchmarks.lease_kinds artifacts/benchmarks.json > artifacts/lease_kinds.md  # make bench's

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


def main(paths: list[str]) -> None:
    rows: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        # A worker's output is a list of rows; make bench's benchmarks.json holds them in "rows".
        found = data["rows"] if isinstance(data, dict) else data
        rows += [row for row in found if row["workload"].startswith(("pg ", "lease: pg"))]
    print("# Database lease kinds beside asyncpg.Pool and SQLAlchemy\n")
    print((__doc__ or "").split("\n\n", 2)[2].strip() + "\n")
    print("\n".join(_table(rows)))


if __name__ == "__main__":
    main(sys.argv[1:])
