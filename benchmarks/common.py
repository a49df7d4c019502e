"""Shared harness for resync's benchmarks: closed-loop runs, percentiles, reports.

A run starts ``concurrency`` workers that each call ``op()`` in a loop until the
duration is up (or ``total_ops`` calls are made). Every call's latency is
measured from the moment the worker asks (so queueing for a pool slot counts).
Rounds are repeated and the median round (by throughput) is reported.

Results go to ``artifacts/<name>.json`` (machine-readable) and
``artifacts/<name>.md`` (a table with the resync / baseline ratio per row).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

Op = Callable[[], Awaitable[object]]


@dataclass
class RunResult:
    """One measured configuration (the median round of several)."""

    workload: str
    impl: str
    concurrency: int
    ops: int
    seconds: float
    errors: int
    mean: float
    p50: float
    p99: float
    max: float
    rounds: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def p99_over_mean(self) -> float:
        return self.p99 / self.mean if self.mean else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ops_per_s"] = round(self.ops_per_s, 1)
        data["p99_over_mean"] = round(self.p99_over_mean, 3)
        return data


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest-rank."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


async def run_closed_loop(
    op: Op,
    *,
    concurrency: int,
    duration: float = 2.0,
    total_ops: int | None = None,
    warmup: float = 0.2,
) -> tuple[int, float, int, list[float]]:
    """Run ``op`` from ``concurrency`` workers; return (ops, seconds, errors, latencies)."""
    latencies: list[float] = []
    errors = 0
    stop_at = 0.0
    remaining = [total_ops if total_ops is not None else -1]
    perf = time.perf_counter
    record = latencies.append

    async def worker() -> None:
        nonlocal errors
        while True:
            if remaining[0] == 0:
                return
            if remaining[0] > 0:
                remaining[0] -= 1
            t0 = perf()
            if total_ops is None and t0 >= stop_at:
                return
            try:
                await op()
            except Exception:
                errors += 1
                continue
            record(perf() - t0)

    if warmup > 0 and total_ops is None:
        stop_at = perf() + warmup
        await asyncio.gather(*(worker() for _ in range(min(concurrency, 50))))
        latencies.clear()
        errors = 0
    start = perf()
    stop_at = start + duration
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = perf() - start
    return len(latencies), elapsed, errors, latencies


async def measure(
    workload: str,
    impl: str,
    op: Op,
    *,
    concurrency: int,
    rounds: int = 3,
    duration: float = 2.0,
    total_ops: int | None = None,
) -> RunResult:
    """Several rounds of :func:`run_closed_loop`; the median round by throughput."""
    results: list[RunResult] = []
    for _ in range(rounds):
        ops, seconds, errors, lat = await run_closed_loop(
            op, concurrency=concurrency, duration=duration, total_ops=total_ops
        )
        lat.sort()
        mean = statistics.fmean(lat) if lat else 0.0
        results.append(
            RunResult(
                workload=workload,
                impl=impl,
                concurrency=concurrency,
                ops=ops,
                seconds=seconds,
                errors=errors,
                mean=mean,
                p50=percentile(lat, 0.50),
                p99=percentile(lat, 0.99),
                max=lat[-1] if lat else 0.0,
                rounds=rounds,
            )
        )
    results.sort(key=lambda r: r.ops_per_s)
    return results[len(results) // 2]


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    loop = type(asyncio.get_event_loop_policy()).__module__
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loop_policy": loop,
    }


def ratio_rows(results: Iterable[RunResult], *, ours: str, baseline: str) -> list[dict[str, Any]]:
    """Pair each ``ours`` row with the ``baseline`` row of the same workload/concurrency."""
    by_key: dict[tuple[str, int, str], RunResult] = {
        (r.workload, r.concurrency, r.impl): r for r in results
    }
    rows = []
    for (workload, conc, impl), res in sorted(by_key.items()):
        if impl != ours:
            continue
        base = by_key.get((workload, conc, baseline))
        rows.append(
            {
                "workload": workload,
                "concurrency": conc,
                "ratio": round(res.ops_per_s / base.ops_per_s, 3)
                if base and base.ops_per_s
                else None,
                "p99_over_mean": round(res.p99_over_mean, 3),
                "baseline_p99_over_mean": round(base.p99_over_mean, 3) if base else None,
            }
        )
    return rows


def markdown_table(results: Iterable[RunResult], *, ours: str, baseline: str) -> str:
    """One row per result, with resync / baseline throughput on the resync rows."""
    results = list(results)
    base = {(r.workload, r.concurrency): r for r in results if r.impl == baseline}
    lines = [
        "| workload | impl | concurrency | ops/s | p50 ms | p99 ms | p99/mean | errors | ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r.workload, r.concurrency, r.impl != baseline)):
        ratio = ""
        if r.impl == ours and (b := base.get((r.workload, r.concurrency))) and b.ops_per_s:
            ratio = f"{r.ops_per_s / b.ops_per_s:.3f}"
        lines.append(
            f"| {r.workload} | {r.impl} | {r.concurrency} | {r.ops_per_s:,.0f} | "
            f"{r.p50 * 1e3:.3f} | {r.p99 * 1e3:.3f} | {r.p99_over_mean:.2f} | "
            f"{r.errors} | {ratio} |"
        )
    return "\n".join(lines)


def write_report(
    name: str,
    title: str,
    results: list[RunResult],
    *,
    ours: str,
    baseline: str,
    notes: Iterable[str] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``artifacts/<name>.json`` and ``artifacts/<name>.md``; return the .md path."""
    ARTIFACTS.mkdir(exist_ok=True)
    env = environment()
    payload = {
        "benchmark": name,
        "environment": env,
        "results": [r.as_dict() for r in results],
        "ratios": ratio_rows(results, ours=ours, baseline=baseline),
        **(extra or {}),
    }
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = [
        f"# {title}",
        "",
        f"Measured {env['when']} on {env['platform']}, Python {env['python']}, "
        f"{env['cpus']} CPUs. Median of {results[0].rounds if results else 0} rounds. "
        f"`ratio` = {ours} ops/s / {baseline} ops/s at the same concurrency.",
        "",
        markdown_table(results, ours=ours, baseline=baseline),
        "",
        *notes,
        "",
    ]
    path = ARTIFACTS / f"{name}.md"
    path.write_text("\n".join(md))
    return path
