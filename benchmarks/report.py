"""Judge the targets and write ``benchmarks.json`` and ``benchmarks.md``.

Targets (reported, never asserted in tests):

- ratio: resync ÷ the path it wraps >= 0.97 at every concurrency;
- tail: p99 ÷ mean <= 1.3 at 1,000 callers for every resync pool;
- errors: none at 1,000 callers (30 s acquire timeout everywhere);
- RSS: flat (± 5%) across 1,000,000 leases.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.harness import Row
from benchmarks.notes import closing_notes, explain

__all__ = ["RATIO_TARGET", "TAIL_TARGET", "verdicts", "write"]

RATIO_TARGET = 0.97
TAIL_TARGET = 1.3
TOP = 1000
BACKENDS = {
    "postgres": "PostgreSQL",
    "redis": "Redis",
    "http": "HTTP",
    "lease": "Lease only (check out, yield once, check in)",
    "service": "End to end: /api/kv through `resync serve`",
}


def _ours(row: Row) -> bool:
    return row.impl.startswith("resync")


def verdicts(rows: list[Row], rss: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per target: met or not, and the rows that miss it."""
    ratio_rows = [r for r in rows if r.ratio is not None]
    ratio_misses = [r for r in ratio_rows if r.ratio is not None and r.ratio < RATIO_TARGET]
    tail_rows = [r for r in rows if _ours(r) and r.concurrency == TOP and r.backend != "service"]
    tail_misses = [r for r in tail_rows if r.p99_over_mean > TAIL_TARGET]
    error_rows = [r for r in rows if _ours(r) and r.concurrency == TOP]
    error_misses = [r for r in error_rows if r.errors]
    rss_misses = [r for r in rss if not r["met"]]

    def label(r: Row) -> str:
        return f"{r.workload} / {r.impl} @{r.concurrency} ({r.loop})"

    return [
        {
            "target": f"resync ÷ wrapped path >= {RATIO_TARGET} at every concurrency",
            "key": "ratio",
            "checked": len(ratio_rows),
            "met": not ratio_misses and bool(ratio_rows),
            "misses": [f"{label(r)}: {r.ratio:.3f}" for r in ratio_misses],
            "workloads": sorted({r.workload for r in ratio_misses}),
        },
        {
            "target": f"p99 ÷ mean <= {TAIL_TARGET} at {TOP:,} callers, every resync pool",
            "key": "tail",
            "checked": len(tail_rows),
            "met": not tail_misses and bool(tail_rows),
            "misses": [f"{label(r)}: {r.p99_over_mean:.2f}" for r in tail_misses],
            "workloads": sorted({r.workload for r in tail_misses}),
        },
        {
            "target": f"zero errors at {TOP:,} callers (30 s acquire timeout)",
            "key": "errors",
            "checked": len(error_rows),
            "met": not error_misses and bool(error_rows),
            "misses": [f"{label(r)}: {r.errors} errors" for r in error_misses],
            "workloads": sorted({r.workload for r in error_misses}),
        },
        {
            "target": "RSS flat (± 5%) across 1,000,000 leases",
            "key": "rss",
            "checked": len(rss),
            "met": not rss_misses and bool(rss),
            "misses": [f"{r['pool']}: {r['drift_percent']:+.2f}%" for r in rss_misses],
            "workloads": [r["pool"] for r in rss_misses],
        },
    ]


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _table(rows: Iterable[Row]) -> list[str]:
    lines = [
        "| workload | impl | loop | callers | ops/s | p50 ms | p99 ms | p99/mean | errors "
        "| ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = ""
        if r.ratio is not None:
            mark = "" if r.ratio >= RATIO_TARGET else " ✗"
            ratio = f"{r.ratio:.3f}{mark} (÷ {r.baseline})"
        tail = f"{r.p99_over_mean:.2f}"
        if _ours(r) and r.concurrency == TOP and r.backend != "service":
            tail += " ✓" if r.p99_over_mean <= TAIL_TARGET else " ✗"
        lines.append(
            f"| {r.workload} | {r.impl} | {r.loop} | {r.concurrency:,} | {r.ops_per_s:,.0f} | "
            f"{_fmt(r.p50_ms)} | {_fmt(r.p99_ms)} | {tail} | {r.errors} | {ratio} |"
        )
    return lines


def _at_top(rows: list[Row]) -> list[str]:
    """Every implementation at 1,000 callers, both loops side by side."""
    top = [r for r in rows if r.concurrency == TOP]
    loops = list(dict.fromkeys(r.loop for r in top))
    if not top:
        return []
    lines = [
        f"## At {TOP:,} callers",
        "",
        "| workload | impl | "
        + " | ".join(f"ops/s {loop} | p99/mean {loop} | errors {loop}" for loop in loops)
        + " |",
        "|---|---|" + "---:|---:|---:|" * len(loops),
    ]
    by_key = {(r.workload, r.impl, r.loop): r for r in top}
    for workload, impl in dict.fromkeys((r.workload, r.impl) for r in top):
        cells = []
        for loop in loops:
            r = by_key.get((workload, impl, loop))
            if r is None:
                cells.append("- | - | -")
                continue
            tail = f"{r.p99_over_mean:.2f}"
            if _ours(r) and r.backend != "service":
                tail = f"**{tail}**" if r.p99_over_mean <= TAIL_TARGET else f"**{tail}** ✗"
            cells.append(f"{r.ops_per_s:,.0f} | {tail} | {r.errors}")
        lines.append(f"| {workload} | {impl} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _order(rows: list[Row], plan: list[tuple[str, tuple[str, ...]]]) -> list[Row]:
    workloads = [w for w, _ in plan]
    impls = {w: list(i) for w, i in plan}

    def key(r: Row) -> tuple[int, str, int, int]:
        w = workloads.index(r.workload) if r.workload in workloads else len(workloads)
        i = impls.get(r.workload, []).index(r.impl) if r.impl in impls.get(r.workload, []) else 99
        return (w, r.loop, r.concurrency, i)

    return sorted(rows, key=key)


def write(
    out_dir: Path,
    *,
    rows: list[Row],
    rss: list[dict[str, Any]],
    plan: list[tuple[str, tuple[str, ...]]],
    meta: dict[str, Any],
    plots: list[Path],
    failures: list[str],
) -> Path:
    """Write ``benchmarks.json`` and ``benchmarks.md`` into ``out_dir``; the .md path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    judged = verdicts(rows, rss)
    payload = {
        "benchmark": "benchmarks",
        "meta": meta,
        "targets": judged,
        "rows": [r.as_dict() for r in _order(rows, plan)],
        "rss": rss,
        "failures": failures,
    }
    (out_dir / "benchmarks.json").write_text(json.dumps(payload, indent=1) + "\n")
    md = [
        "# resync vs the pools it is compared with",
        "",
        f"Measured {meta['when']} on {meta['platform']}, Python {meta['python']}, "
        f"{meta['cpus']} CPUs, by `make bench` in {meta['total_seconds']:.0f} s. "
        f"1-minute load average {meta['load_start']:.2f} at the start and "
        f"{meta['load_end']:.2f} at the end (other work on the machine shows there; "
        f"rows a few percent apart are within its noise).",
        "",
        f"Every row: closed-loop callers, pool size 10 on every side, 30 s acquire timeout; "
        f"{meta['rounds']} rounds of {meta['duration']:g} s (lease-only rows "
        f"{meta['duration'] / 2:g} s, service rows {meta['service_duration']} s) after a "
        "warm-up, implementations alternating round by round; each figure is the median of "
        "its rounds, `ratio` the median of the per-round ratios resync ÷ wrapped path. "
        f"Loops: {', '.join(meta['loops'])}, each in its own process. Drivers: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + ".",
        "",
        "## Targets",
        "",
        "| target | result | misses |",
        "|---|---|---|",
    ]
    for v in judged:
        result = "met" if v["met"] else ("**missed**" if v["checked"] else "not measured")
        misses = "; ".join(v["misses"]) or "none"
        md.append(f"| {v['target']} | {result} ({v['checked']} checked) | {misses} |")
    if failures:
        md += ["", "**Parts that failed to run:** " + "; ".join(failures)]
    md += ["", *explain(judged, rows), ""]
    ordered = _order(rows, plan)
    md += _at_top(ordered)
    for backend, title in BACKENDS.items():
        section = [r for r in ordered if r.backend == backend]
        if not section:
            continue
        md += [f"## {title}", "", *_table(section), ""]
        md += [f"![{p.stem}]({p.name})" for p in plots if f"_{backend}_" in p.name]
        md.append("")
    if rss:
        md += [
            "## Resident memory across a million leases",
            "",
            "| pool | leases | RSS after warm-up MB | RSS at end MB | drift | leases/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in rss:
            mark = "✓" if r["met"] else "✗"
            md.append(
                f"| {r['pool']} | {r['leases']:,} | {r['rss_after_warmup_mb']:.1f} | "
                f"{r['rss_at_end_mb']:.1f} | {r['drift_percent']:+.2f}% {mark} | "
                f"{r['leases_per_s']:,.0f} |"
            )
        md.append("")
    md += ["## Notes", "", *closing_notes(), ""]
    path = out_dir / "benchmarks.md"
    path.write_text("\n".join(md))
    return path
