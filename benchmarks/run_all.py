"""``make bench``: the whole suite, each part on each loop in its own process.

    python -m benchmarks.run_all            # everything -> artifacts/
    python -m benchmarks.run_all --parts pg,redis --loops uvloop --rounds 1

Runs, for asyncio and uvloop in turn: lease-only without I/O, PostgreSQL
(asyncpg, psycopg_pool, SQLAlchemy's AsyncSession and engine.connect(), and
resync's session, Core and driver leases), Redis, HTTP and the service end
to end; then the RSS drift across a million leases (in-memory, SQLite, and
each PostgreSQL lease kind: ``benchmarks/rss_leases.py``), the round trips per
PostgreSQL lease counted on the wire (``benchmarks/pg_roundtrips.py``), the
admission benchmark (``benchmarks/bench_admission.py``) and the overload part
(goodput at 1x-3x capacity, queue management off and on, the adaptive limit:
``benchmarks/overload.py``). A rich progress bar
follows every round; rows are printed as they finish. Writes
``artifacts/benchmarks.md``, ``benchmarks.json`` and the PNG plots (and
``roundtrips.*``, ``rss_leases.*``), and prints the total time. A part that
fails is reported and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks import pg_roundtrips
from benchmarks.harness import EVENT_PREFIX, Row, ticks
from benchmarks.overload import TICKS as OVERLOAD_TICKS
from benchmarks.workloads_memory import RSS_TICKS

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
LOOPS = ("asyncio", "uvloop")
PARTS = ("lease", "pg", "redis", "http", "service")
DRIVERS = ("asyncpg", "psycopg", "psycopg-pool", "sqlalchemy", "redis", "httpx", "uvloop")


def _plans() -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    from benchmarks import workloads_memory, workloads_pg, workloads_redis_http, workloads_service

    return {
        "lease": workloads_memory.PLAN,
        "pg": workloads_pg.PLAN,
        "redis": workloads_redis_http.REDIS_PLAN,
        "http": workloads_redis_http.HTTP_PLAN,
        "service": workloads_service.PLAN,
    }


def _versions() -> dict[str, str]:
    found = {}
    for name in ("resync", *DRIVERS):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


class Runner:
    """Starts worker processes and feeds their events to the progress bar."""

    def __init__(self, progress: Progress, task: Any, console: Console, args: argparse.Namespace):
        self.progress, self.task, self.console, self.args = progress, task, console, args
        self.failures: list[str] = []
        self.seconds: dict[str, float] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="resync-bench-"))

    def run(self, part: str, loop: str, extra: list[str] | None = None) -> Any:
        out = self.tmp / f"{part}-{loop}.json"
        errors = self.tmp / f"{part}-{loop}.stderr"
        duration = self.args.service_duration if part == "service" else self.args.duration
        if part == "overload":
            duration = self.args.overload_duration
        command = [sys.executable, "-m", "benchmarks.worker", "--part", part, "--loop", loop]
        command += ["--rounds", str(self.args.rounds), "--duration", str(duration)]
        command += ["--out", str(out), *(extra or [])]
        self.progress.update(self.task, description=f"{part} ({loop})")
        began = time.perf_counter()
        with errors.open("w") as stderr:
            proc = subprocess.Popen(
                command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(EVENT_PREFIX):
                    self._event(json.loads(line[len(EVENT_PREFIX) :]), part, loop)
            code = proc.wait()
        self.seconds[f"{part} ({loop})"] = round(time.perf_counter() - began, 1)
        if code != 0 or not out.exists():
            tail = errors.read_text().strip().splitlines()[-1:] or ["(no output)"]
            self.failures.append(f"{part} ({loop}): exit {code}: {tail[0]}")
            self.console.print(f"[red]{part} ({loop}) failed[/]: {tail[0]}")
            return None
        return json.loads(out.read_text())

    def _event(self, event: dict[str, Any], part: str, loop: str) -> None:
        if event["event"] == "tick":
            what = f"{part} ({loop}): {event.get('workload')} / {event.get('impl')}"
            if "concurrency" in event:
                what += f" @{event['concurrency']}"
            self.progress.update(self.task, advance=1, description=what)
        elif event["event"] == "row":
            r = Row.from_dict(event["row"])
            ratio = f"  ratio {r.ratio:.3f}" if r.ratio is not None else ""
            self.console.print(
                f"  {r.loop:7} {r.workload:22} {r.impl:26} @{r.concurrency:<5} "
                f"{r.ops_per_s:10,.0f} ops/s  p99 {r.p99_ms:9.3f} ms  "
                f"p99/mean {r.p99_over_mean:5.2f}  errors {r.errors}{ratio}",
                highlight=False,
            )


def _admission(runner: Runner, loops: list[str]) -> None:
    """Regenerate ``artifacts/bench_admission.*`` (fewer, shorter rounds than its default)."""
    command = [sys.executable, "-m", "benchmarks.bench_admission", "--rounds", "3"]
    command += ["--cycles", "100000", "--duration", "2", "--loops", ",".join(loops)]
    runner.progress.update(runner.task, description="admission cost and fairness")
    began = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    runner.seconds["admission"] = round(time.perf_counter() - began, 1)
    if result.returncode != 0:
        runner.failures.append(f"bench_admission: exit {result.returncode}")
    for line in result.stdout.strip().splitlines():
        runner.console.print(f"  {line}", highlight=False)
    runner.progress.update(runner.task, advance=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument(
        "--parts", default=",".join((*PARTS, "rss", "roundtrips", "admission", "overload"))
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=0.5, help="seconds per round")
    parser.add_argument("--service-duration", type=int, default=1, help="whole seconds")
    parser.add_argument("--rss-leases", type=int, default=1_000_000)
    parser.add_argument("--rss-db-leases", type=int, default=1_000_000)
    parser.add_argument("--rss-pg-leases", type=int, default=1_000_000, help="per lease kind")
    parser.add_argument(
        "--rss-budget", type=float, default=120.0, help="seconds per PostgreSQL RSS row at most"
    )
    parser.add_argument("--roundtrip-leases", type=int, default=200)
    parser.add_argument(
        "--overload-duration", type=float, default=2.0, help="measured seconds per overload cell"
    )
    parser.add_argument("--out", type=Path, default=ARTIFACTS)
    args = parser.parse_args()
    loops = [loop for loop in args.loops.split(",") if loop]
    parts = [part for part in args.parts.split(",") if part]
    plans = _plans()
    total = sum(
        ticks(len(impls), args.rounds)
        for part in parts
        if part in plans
        for _, impls in plans[part]
    ) * len(loops)
    total += RSS_TICKS * ("rss" in parts) + ("admission" in parts)
    total += OVERLOAD_TICKS * ("overload" in parts)
    total += len(pg_roundtrips.WORKLOADS) * len(plans["pg"][0][1]) * ("roundtrips" in parts)

    started = time.perf_counter()
    tree = pg_roundtrips.tree_state()  # the code the workers import
    load_start = os.getloadavg()[0]
    console = Console(width=None if sys.stdout.isatty() else 160)
    rows: list[Row] = []
    rss: list[dict[str, Any]] = []
    trips: list[dict[str, Any]] | None = None
    overload: list[dict[str, Any]] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        runner = Runner(progress, progress.add_task("starting", total=total), console, args)
        for loop in loops:
            for part in (p for p in PARTS if p in parts):
                found = runner.run(part, loop)
                rows += [Row.from_dict(r) for r in found or []]
        if "rss" in parts:
            extra = [
                "--rss-leases",
                str(args.rss_leases),
                "--rss-db-leases",
                str(args.rss_db_leases),
                "--rss-pg-leases",
                str(args.rss_pg_leases),
                "--rss-budget",
                str(args.rss_budget),
            ]
            rss = runner.run("rss", "asyncio", extra) or []
        if "roundtrips" in parts:
            extra = ["--roundtrip-leases", str(args.roundtrip_leases)]
            trips = runner.run("roundtrips", "asyncio", extra)
        if "admission" in parts:
            _admission(runner, loops)
        if "overload" in parts:
            overload = runner.run("overload", "asyncio") or []
    from benchmarks import plots, report

    meta = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "loops": loops,
        "rounds": args.rounds,
        "duration": args.duration,
        "service_duration": args.service_duration,
        "versions": _versions(),
        "part_seconds": runner.seconds,
        "total_seconds": time.perf_counter() - started,
    }
    written = plots.plot_all(rows, args.out)
    if trips:
        written.append(plots.plot_roundtrips(trips, args.out))
        pg_roundtrips.write([{**tree, "records": trips}], args.out)
    if overload:
        from benchmarks import overload as overload_part

        overload_part.write(overload, args.out, note="run by make bench")
        written.append(args.out / "overload.png")
    pg_rss = [r for r in rss if "PostgreSQL" in r["pool"]]
    if pg_rss:
        from benchmarks import rss_leases

        rss_leases.write(pg_rss, args.out, tree)
    plan = [item for part in PARTS for item in plans[part]]
    path = report.write(
        args.out,
        rows=rows,
        rss=rss,
        plan=plan,
        meta=meta,
        plots=written,
        failures=runner.failures,
        roundtrips=trips,
        overload=overload,
    )
    for verdict in json.loads((args.out / "benchmarks.json").read_text())["targets"]:
        state = "[green]met[/]" if verdict["met"] else "[red]MISSED[/]"
        console.print(f"{state}  {verdict['target']}  {'; '.join(verdict['misses'][:4])}")
    console.print(f"wrote {path} and {len(written)} plots")
    console.print(f"total time: {time.perf_counter() - started:.0f} s")
    if runner.failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
