"""Judge the targets and write ``benchmarks.json`` and ``benchmarks.md``.

Targets (reported, never asserted in tests):

- ratio: resync ÷ the path it wraps >= 0.97 at every concurrency;
- tail: p99 ÷ mean <= 1.3 at 1,000 callers for every resync pool;
- errors: none at 1,000 callers (30 s acquire timeout everywhere);
- RSS: flat (± 5%) across 1,000,000 leases;
- round trips (when the ``roundtrips`` part ran, counted on the wire by
  :mod:`benchmarks.pg_roundtrips`): one per single-statement driver lease,
  none for an empty hot lease of any resync kind.

Written by ``make bench``. Measurements made after a ``make bench``
(round trips, the PostgreSQL RSS rows) go into its ``benchmarks.md`` with::

    .venv/bin/python -m benchmarks.report --splice  # artifacts/roundtrips.json, rss_leases.json
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.common import ARTIFACTS
from benchmarks.harness import Row
from benchmarks.notes import closing_notes, explain
from benchmarks.pg_roundtrips import table as roundtrip_table

__all__ = ["RATIO_TARGET", "ROUND_TRIP_TARGETS", "TAIL_TARGET", "rss_table", "verdicts", "write"]

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


#: (workload, resync implementation) -> the round trips per hot lease issue 16 asks for.
ROUND_TRIP_TARGETS = {
    ("pg SELECT 1", "resync driver"): 1.0,
    ("lease: pg", "resync"): 0.0,
    ("lease: pg", "resync core"): 0.0,
    ("lease: pg", "resync driver"): 0.0,
}


def _ours(row: Row) -> bool:
    return row.impl.startswith("resync")


def _round_trip_verdict(trips: list[dict[str, Any]]) -> dict[str, Any]:
    found = {(t["workload"], t["impl"]): t["round_trips_per_lease"] for t in trips}
    checked = {key: found[key] for key in ROUND_TRIP_TARGETS if key in found}
    misses = [(key, value) for key, value in checked.items() if value > ROUND_TRIP_TARGETS[key]]
    return {
        "target": "round trips per hot lease: 1 for a driver lease's SELECT 1, "
        "0 for an empty lease of every kind",
        "key": "roundtrips",
        "checked": len(checked),
        "met": not misses and bool(checked),
        "misses": [
            f"{w} / {i}: {v:g} (target {ROUND_TRIP_TARGETS[(w, i)]:g})" for (w, i), v in misses
        ],
        "workloads": sorted({w for (w, _), _ in misses}),
    }


def verdicts(
    rows: list[Row], rss: list[dict[str, Any]], trips: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One record per target: met or not, and the rows that miss it.

    The round-trip target is judged only when ``trips`` (the ``roundtrips``
    part's records) is given.
    """
    ratio_rows = [r for r in rows if r.ratio is not None]
    ratio_misses = [r for r in ratio_rows if r.ratio is not None and r.ratio < RATIO_TARGET]
    tail_rows = [r for r in rows if _ours(r) and r.concurrency == TOP and r.backend != "service"]
    tail_misses = [r for r in tail_rows if r.p99_over_mean > TAIL_TARGET]
    error_rows = [r for r in rows if _ours(r) and r.concurrency == TOP]
    error_misses = [r for r in error_rows if r.errors]
    rss_misses = [r for r in rss if not r["met"]]

    def label(r: Row) -> str:
        return f"{r.workload} / {r.impl} @{r.concurrency} ({r.loop})"

    found = [
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
    if trips is not None:
        found.append(_round_trip_verdict(trips))
    return found


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _table(rows: Iterable[Row], trips: dict[tuple[str, str], float] | None = None) -> list[str]:
    """The rows; with ``trips`` ((workload, impl) -> round trips per lease) a column of them."""
    trips = trips or {}
    lines = [
        "| workload | impl | loop | callers | ops/s | p50 ms | p99 ms | p99/mean | errors "
        "| ratio |" + (" round trips |" if trips else ""),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if trips else ""),
    ]
    for r in rows:
        ratio = ""
        if r.ratio is not None:
            mark = "" if r.ratio >= RATIO_TARGET else " ✗"
            ratio = f"{r.ratio:.3f}{mark} (÷ {r.baseline})"
        tail = f"{r.p99_over_mean:.2f}"
        if _ours(r) and r.concurrency == TOP and r.backend != "service":
            tail += " ✓" if r.p99_over_mean <= TAIL_TARGET else " ✗"
        trip = trips.get((r.workload, r.impl))
        lines.append(
            f"| {r.workload} | {r.impl} | {r.loop} | {r.concurrency:,} | {r.ops_per_s:,.0f} | "
            f"{_fmt(r.p50_ms)} | {_fmt(r.p99_ms)} | {tail} | {r.errors} | {ratio} |"
            + (f" {'' if trip is None else f'{trip:g}'} |" if trips else "")
        )
    return lines


def rss_table(records: list[dict[str, Any]]) -> list[str]:
    """The Markdown table of RSS drift records (any pool's; older records lack some fields)."""
    every = {r.get("sample_every") for r in records}
    step = f"every {every.pop():,} leases" if len(every) == 1 and None not in every else "tenths"
    lines = [
        "| pool | leases | callers | RSS start MB | RSS end MB | max growth MB | drift "
        f"| leases/s | CPU s | RSS readings MB ({step}) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in records:
        ran = f"{r['leases']:,}"
        if r.get("planned_leases", r["leases"]) > r["leases"]:
            ran += f" of {r['planned_leases']:,} (time budget)"
        mark = "✓" if r["met"] else "✗"
        growth = r.get("max_growth_mb")
        samples = ", ".join(f"{c:.1f}" for c in r.get("checkpoints_mb", []))
        lines.append(
            f"| {r['pool']} | {ran} | {r.get('callers', 1)} | {r['rss_after_warmup_mb']:.1f} | "
            f"{r['rss_at_end_mb']:.1f} | {'' if growth is None else f'{growth:+.2f}'} | "
            f"{r['drift_percent']:+.2f}% {mark} | {r['leases_per_s']:,.0f} | "
            f"{r.get('cpu_seconds', '')} | {samples} |"
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
    roundtrips: list[dict[str, Any]] | None = None,
    overload: list[dict[str, Any]] | None = None,
) -> Path:
    """Write ``benchmarks.json`` and ``benchmarks.md`` into ``out_dir``; the .md path.

    ``roundtrips``: the records of :mod:`benchmarks.pg_roundtrips` (a column in
    the PostgreSQL tables, a section of their own, a target). ``overload``:
    the records of :mod:`benchmarks.overload` (a section of their own).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    judged = verdicts(rows, rss, roundtrips)
    trips = {(t["workload"], t["impl"]): t["round_trips_per_lease"] for t in roundtrips or []}
    payload = {
        "benchmark": "benchmarks",
        "meta": meta,
        "targets": judged,
        "rows": [r.as_dict() for r in _order(rows, plan)],
        "rss": rss,
        "roundtrips": roundtrips or [],
        "overload": overload or [],
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
        shown = trips if backend in ("postgres", "lease") else None
        md += [f"## {title}", "", *_table(section, shown), ""]
        md += [
            f"![{p.stem}]({p.name})"
            for p in plots
            if f"_{backend}_" in p.name and not p.stem.endswith("_roundtrips")
        ]
        md.append("")
    if roundtrips:
        md += [
            "## Round trips per PostgreSQL lease, counted on the wire",
            "",
            f"{roundtrips[0]['leases']} sequential hot leases per row through a counting proxy "
            "(`benchmarks/pg_roundtrips.py`; how it counts and how to rerun it alone: "
            "[roundtrips.md](roundtrips.md)). Round trips are the server's ReadyForQuery "
            "messages after start-up; Query and Sync the client's side of them.",
            "",
            *roundtrip_table(roundtrips),
            "",
        ]
        md += [f"![{p.stem}]({p.name})" for p in plots if p.stem.endswith("_roundtrips")]
        md.append("")
    if rss:
        md += [
            "## Resident memory across a million leases",
            "",
            "The PostgreSQL rows: one pool, each lease kind in turn, 10 concurrent callers; "
            "how to rerun them alone: [rss_leases.md](rss_leases.md).",
            "",
            *rss_table(rss),
            "",
        ]
    if overload:
        from benchmarks.overload import table as overload_table

        md += [
            "## Overload: goodput at 1x-3x capacity",
            "",
            "Open and closed loops against a pool of 5 (in-memory and PostgreSQL, 10 ms "
            "service), queue management off (FIFO until `connection_timeout`) and on, a 250 ms "
            "client deadline; then the adaptive limit while the service time doubles. How it is "
            "measured and how to rerun it alone: [overload.md](overload.md).",
            "",
            *overload_table(overload),
            "",
        ]
        md += [f"![{p.stem}]({p.name})" for p in plots if p.stem == "overload"]
        md.append("")
    md += ["## Notes", "", *closing_notes(), ""]
    path = out_dir / "benchmarks.md"
    path.write_text("\n".join(md))
    return path


SPLICE_START = "<!-- measured after this run: begin -->"
SPLICE_END = "<!-- measured after this run: end -->"


def splice(
    md_path: Path,
    trips: dict[str, Any] | None,
    rss: dict[str, Any] | None,
    plot: Path | None = None,
) -> None:
    """Put the round-trip and PostgreSQL RSS measurements made after a ``make bench`` into it.

    ``trips`` / ``rss``: the JSON documents :mod:`benchmarks.pg_roundtrips`
    and :mod:`benchmarks.rss_leases` write. The block goes between two HTML
    comments (replaced on the next splice) before ``## At 1,000 callers`` (or
    ``## Notes``); the next ``make bench`` writes these sections itself.
    """
    block = [
        SPLICE_START,
        "## Measured after this run: round trips and RSS per lease kind (issue 16)",
        "",
        "Not part of the `make bench` run above: measured separately, at the commits "
        "named, with `python -m benchmarks.pg_roundtrips` and `python -m "
        "benchmarks.rss_leases` (the next `make bench` measures both itself). The rows "
        "above predate the session, Core and driver lease kinds.",
        "",
    ]
    if trips:
        leases = trips["runs"][0]["records"][0]["leases"]
        block += [
            "### Round trips per PostgreSQL lease, counted on the wire",
            "",
            f"{leases} sequential hot leases per row through a counting proxy; the method and "
            "how to rerun: [roundtrips.md](roundtrips.md).",
            "",
        ]
        for run in trips["runs"]:
            where = (
                f"the working tree at `{run['commit']}`"
                if run["resync"] == "working tree"
                else f"`resync/` as committed at `{run['commit']}`"
            )
            if run.get("uncommitted_in_resync"):
                where += " (with uncommitted changes; see roundtrips.md)"
            block += [f"{where}:", "", *roundtrip_table(run["records"]), ""]
        if plot is not None:
            block += [f"![{plot.stem}]({plot.name})", ""]
    if rss:
        meta = rss["meta"]
        block += [
            "### Resident memory across 1,000,000 leases of each PostgreSQL lease kind",
            "",
            f"At commit `{meta.get('commit')}`, {meta.get('when')}; the method, how to rerun "
            "and an earlier run: [rss_leases.md](rss_leases.md).",
            "",
            *rss_table(rss["records"]),
            "",
        ]
    block.append(SPLICE_END)
    text = md_path.read_text()
    if SPLICE_START in text and SPLICE_END in text:
        head, rest = text.split(SPLICE_START, 1)
        text = head + "\n".join(block) + rest.split(SPLICE_END, 1)[1]
    else:
        anchor = f"## At {TOP:,} callers" if f"## At {TOP:,} callers" in text else "## Notes"
        head, _, tail = text.partition(anchor)
        text = head + "\n".join(block) + "\n\n" + anchor + tail
    md_path.write_text(text)


def main() -> None:
    """``python -m benchmarks.report --splice``: :func:`splice` into artifacts/benchmarks.md."""
    import argparse

    from benchmarks import plots as plotting

    parser = argparse.ArgumentParser(description=(splice.__doc__ or "").splitlines()[0])
    parser.add_argument("--splice", action="store_true", required=True)
    parser.add_argument("--dir", type=Path, default=ARTIFACTS)
    args = parser.parse_args()
    found = {}
    for name in ("roundtrips", "rss_leases"):
        path = args.dir / f"{name}.json"
        found[name] = json.loads(path.read_text()) if path.exists() else None
    plot = None
    if found["roundtrips"]:
        plot = plotting.plot_roundtrips(found["roundtrips"]["runs"][0]["records"], args.dir)
    splice(args.dir / "benchmarks.md", found["roundtrips"], found["rss_leases"], plot)


if __name__ == "__main__":
    main()
