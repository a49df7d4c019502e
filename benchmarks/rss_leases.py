"""Resident memory across a million PostgreSQL leases of each kind: session, Core, driver.

Rerun (PostgreSQL at ``RESYNC_TEST_PG_URL``, default 127.0.0.1:5432)::

    .venv/bin/python -m benchmarks.rss_leases                  # -> artifacts/rss_leases.{md,json}
    .venv/bin/python -m benchmarks.rss_leases --leases 200000 --budget 60 --out /tmp/rss
    .venv/bin/python -m benchmarks.rss_leases --earlier artifacts/rss_leases_f66fad2.json

``make bench`` runs the same three measurements in its ``rss`` part (beside
the in-memory and SQLite pools) and puts them in ``artifacts/benchmarks.md``.

One ``DatabaseConnectionPool`` (``min_size = max_size = 10``) and, for each
lease kind in turn -- ``pool.get_connection()`` (``AsyncSession``),
``pool.connection()`` (Core ``AsyncConnection``), ``pool.driver_connection()``
(``asyncpg.Connection``) -- ``CALLERS`` concurrent callers take empty leases
until ``--leases`` are done: the pool's own path only, whatever it sends to
the server for an empty lease included. Two ways (``--modes``): ``yield``,
check out, ``await asyncio.sleep(0)``, check in (the callers overlap, as in
the ``lease: pg`` throughput rows), and ``no yield``, check out and check in
at once (a hot lease that sends nothing never suspends, so each caller runs
its leases back to back without the loop running in between). The resident
set (``/proc/self/statm``) is read after a warm-up of 20,000 leases and a
collection, every ``--step`` leases, and at the end after a collection;
*max growth* is the largest reading minus the first. A kind that reaches
``--budget`` seconds stops there and its row says how many leases ran.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from pathlib import Path
from typing import Any

from benchmarks.common import ARTIFACTS, environment
from benchmarks.harness import settle
from benchmarks.pg_roundtrips import tree_state
from benchmarks.report import rss_table
from benchmarks.workloads_memory import rss_drift
from benchmarks.workloads_pg import PG_URL, POOL_SIZE, SERVER_SETTINGS, TIMEOUT
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool

__all__ = ["CALLERS", "KINDS", "render", "run_pg", "write"]

CALLERS = 10
LEASES = 1_000_000
STEP = 100_000
WARMUP = 20_000
MODES = ("yield", "no yield")
#: The name of each kind's row, and the pool method that leases it.
KINDS = (
    ("resync session (PostgreSQL)", "get_connection"),
    ("resync core (PostgreSQL)", "connection"),
    ("resync driver (PostgreSQL)", "driver_connection"),
)


async def run_pg(
    leases: int = LEASES,
    *,
    step: int = STEP,
    budget: float = math.inf,
    callers: int = CALLERS,
    warmup: int = WARMUP,
    modes: tuple[str, ...] = MODES,
) -> list[dict[str, Any]]:
    """One RSS record per lease kind (see :func:`benchmarks.workloads_memory.rss_drift`)."""
    config = ConnectionPoolConfig(
        pool_name="rss-pg", min_size=POOL_SIZE, max_size=POOL_SIZE, connection_timeout=TIMEOUT
    )
    pool = DatabaseConnectionPool(config, PG_URL, connect_args={"server_settings": SERVER_SETTINGS})
    found = []
    async with pool:
        settle()
        for mode in modes:
            for name, method in KINDS:
                found.append(
                    await rss_drift(
                        name if mode == "yield" else f"{name[:-1]}, no yield)",
                        getattr(pool, method),
                        leases,
                        warmup,
                        callers=callers,
                        step=step,
                        budget=budget,
                        yield_once=mode == "yield",
                    )
                )
    return found


def _state(meta: dict[str, Any]) -> str:
    dirty = meta.get("uncommitted_in_resync") or []
    return f"commit `{meta.get('commit')}`" + (
        " plus uncommitted changes to " + ", ".join(f"`{p}`" for p in dirty) if dirty else ""
    )


def render(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """``artifacts/rss_leases.md`` (this run; :func:`write` adds earlier ones)."""
    state = _state(meta)
    return "\n".join(
        [
            "# Resident memory across a million leases of each PostgreSQL lease kind",
            "",
            f"Measured {meta.get('started') or meta.get('when')} (start) to "
            f"{meta.get('when')} on {meta.get('platform')}, Python "
            f"{meta.get('python')}, at {state}. Rerun with "
            "`.venv/bin/python -m benchmarks.rss_leases` (writes this file and "
            "`rss_leases.json`); `make bench` runs the same rows in its `rss` part.",
            "",
            (__doc__ or "").split("\n\n", 4)[4].strip().replace("``", "`"),
            "",
            "Target (issue 16): RSS flat (± 5 %) over 1,000,000 leases of each kind.",
            "",
            *rss_table(records),
            "",
        ]
    )


def write(
    records: list[dict[str, Any]],
    out_dir: Path,
    state: dict[str, Any],
    earlier: list[Path] | None = None,
) -> Path:
    """Write ``rss_leases.json`` and ``rss_leases.md`` into ``out_dir``; the .md path.

    ``state``: :func:`~benchmarks.pg_roundtrips.tree_state` taken when the
    measurement started (the code it imported). ``earlier``: ``rss_leases``
    JSON files of earlier runs, shown after this one.
    """
    meta = {**environment(), **state}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "rss_leases.json").write_text(
        json.dumps({"meta": meta, "records": records}, indent=1) + "\n"
    )
    text = render(records, meta)
    for old in earlier or []:
        run = json.loads(old.read_text())
        text += "\n" + "\n".join(
            [
                f"## Earlier run: started {run['meta'].get('started')}, at {_state(run['meta'])}",
                "",
                f"From `{old.name}`. {run['meta'].get('note', '')}".strip(),
                "",
                *rss_table(run["records"]),
                "",
            ]
        )
    path = out_dir / "rss_leases.md"
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--leases", type=int, default=LEASES, help="per kind")
    parser.add_argument("--step", type=int, default=STEP, help="leases between readings")
    parser.add_argument("--callers", type=int, default=CALLERS)
    parser.add_argument("--budget", type=float, default=math.inf, help="seconds per row")
    parser.add_argument("--modes", default=",".join(MODES), help="yield, no yield or both")
    parser.add_argument("--out", type=Path, default=ARTIFACTS)
    parser.add_argument(
        "--earlier",
        type=Path,
        action="append",
        default=[],
        help="an rss_leases JSON of an earlier run, shown after this one (repeatable)",
    )
    args = parser.parse_args()
    state = tree_state()  # now: the code this run imports
    records = asyncio.run(
        run_pg(
            args.leases,
            step=args.step,
            budget=args.budget,
            callers=args.callers,
            modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
        )
    )
    path = write(records, args.out, state, args.earlier)
    print("\n".join(rss_table(records)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
