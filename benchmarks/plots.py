"""PNG plots of the suite: throughput and p99 against concurrency, per backend.

One figure per backend and measure (``benchmarks_<backend>_throughput.png``,
``benchmarks_<backend>_p99.png``), one panel per workload, one colour per
implementation; solid lines for asyncio, dashed for uvloop. Both axes are
logarithmic: concurrency spans 1 to 1,000 and the implementations' figures
span orders of magnitude.

``benchmarks_postgres_roundtrips.png``: the round trips per PostgreSQL lease
counted on the wire (:mod:`benchmarks.pg_roundtrips`), one bar per
implementation, one group per workload.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from benchmarks.harness import Row

__all__ = ["plot_all", "plot_roundtrips"]

_STYLES = {"asyncio": "-", "uvloop": "--"}
_MEASURES: dict[str, tuple[str, Callable[[Row], float]]] = {
    "throughput": ("ops/s", lambda r: r.ops_per_s),
    "p99": ("p99 latency (ms)", lambda r: r.p99_ms),
}


def _figure(rows: list[Row], backend: str, measure: str, out_dir: Path) -> Path:
    label, value = _MEASURES[measure]
    workloads = list(dict.fromkeys(r.workload for r in rows))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.2 * len(workloads), 4.2), squeeze=False)
    colours: dict[str, str] = {}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, workload in zip(axes[0], workloads, strict=True):
        subset = [r for r in rows if r.workload == workload]
        for impl in dict.fromkeys(r.impl for r in subset):
            colour = colours.setdefault(impl, palette[len(colours) % len(palette)])
            for loop, style in _STYLES.items():
                line = sorted(
                    (r for r in subset if r.impl == impl and r.loop == loop),
                    key=lambda r: r.concurrency,
                )
                if not line:
                    continue
                ax.plot(
                    [r.concurrency for r in line],
                    [max(value(r), 1e-3) for r in line],
                    style,
                    marker="o",
                    markersize=3.5,
                    color=colour,
                    label=f"{impl} ({loop})",
                )
        ax.set_xscale("log")
        ax.set_xticks([1, 10, 100, 1000], ["1", "10", "100", "1,000"])
        ax.set_yscale("log")
        ax.set_title(workload, fontsize=10)
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{backend}: {label} vs concurrency (pool size 10)", fontsize=11)
    fig.tight_layout()
    path = out_dir / f"benchmarks_{backend}_{measure}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(rows: list[Row], out_dir: Path) -> list[Path]:
    """Write every plot into ``out_dir``; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for backend in dict.fromkeys(r.backend for r in rows):
        subset = [r for r in rows if r.backend == backend]
        for measure in _MEASURES:
            paths.append(_figure(subset, backend, measure, out_dir))
    return paths


def plot_roundtrips(records: list[dict[str, Any]], out_dir: Path) -> Path:
    """Round trips per lease, grouped by workload; the path written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    workloads = list(dict.fromkeys(r["workload"] for r in records))
    impls = list(dict.fromkeys(r["impl"] for r in records))
    by = {(r["workload"], r["impl"]): r["round_trips_per_lease"] for r in records}
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / max(1, len(impls))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, impl in enumerate(impls):
        xs = [w + (i - (len(impls) - 1) / 2) * width for w in range(len(workloads))]
        values = [by.get((workload, impl), 0.0) for workload in workloads]
        bars = ax.bar(xs, values, width, label=impl, color=palette[i % len(palette)])
        ax.bar_label(bars, labels=[f"{v:g}" for v in values], fontsize=7)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_ylabel("round trips per lease (ReadyForQuery)")
    ax.set_title("PostgreSQL: round trips per hot lease, counted by a proxy", fontsize=11)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = out_dir / "benchmarks_postgres_roundtrips.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
