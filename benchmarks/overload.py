"""Overload: goodput at 1x, 2x and 3x a pool's capacity, queue management off and on.

Rerun (PostgreSQL at ``RESYNC_TEST_PG_URL``, default 127.0.0.1:5432; about
2 minutes with the defaults)::

    .venv/bin/python -m benchmarks.overload                  # -> artifacts/overload.{md,json}
    .venv/bin/python -m benchmarks.overload --backends memory --duration 2 --out /tmp/ov

``make bench`` runs it as its ``overload`` part and puts the tables in
``artifacts/benchmarks.md`` too.

Two pools of ``SIZE`` connections, each lease a fixed service time: the
in-memory pool (``asyncio.sleep(SERVICE)`` inside the lease) and PostgreSQL
(``SELECT pg_sleep(SERVICE)`` on a driver lease, the server's own time). The
pool's *capacity* is measured first (a closed loop of ``SIZE`` callers, leases
per second). Then, for each load -- 1x, 2x, 3x that capacity -- and queue
management off (today: FIFO until ``connection_timeout``) and on
(``queue_target`` 50 ms, ``queue_interval`` 0.5 s):

- **open loop**: calls arrive at a fixed rate (load x capacity), whatever
  happened to the earlier ones -- what a service behind a load balancer sees;
- **closed loop**: load x ``SIZE`` callers, each calling again as soon as its
  call ended (after ``SERVICE`` when it was refused, as a client honouring
  ``Retry-After`` would, scaled down).

Every call has a 250 ms *client deadline*: it counts as goodput only if it
finished within 250 ms of its arrival. The pool does not know the deadline
(nothing is cancelled: a client that gave up does not stop the work), its
``connection_timeout`` is 1 s. Figures are over the calls that arrived after
``WARMUP`` s (two queue intervals), until the end of the cell:

- *goodput*: calls finished within the deadline / calls offered; and the
  same per second / capacity (the issue's target: >= 90 % at 3x);
- *refused p99*: how long a refused call took to learn it (overloaded error);
- *admitted p99*: latency of the calls that got a connection (queue + service);
- *timeouts*: calls that waited the whole ``connection_timeout``.

**Adaptive limit** (``adaptive_limit`` and queue management on, ``min_size``
1, ``max_size`` ``2 * SIZE``): an open loop at that pool's capacity (2x the
measured ``SIZE`` capacity) for ``ADAPTIVE_SECONDS``; halfway the service
time doubles, so the load becomes 2x what the pool can serve.
The limit is sampled every 50 ms; *settle* is the time from the change until
the limit stays within 10 % of its final value (the mean of the last second).
*admitted p99 from 2 s after* is the p99 of the calls started ``SETTLED`` s
after the change, against the bound ``2 x queue_target`` + the new service
time (what the issue means by "returns under the target").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import ARTIFACTS, environment, percentile
from benchmarks.harness import emit
from resync.core.exceptions import PoolOverloadedError, PoolTimeoutError
from resync.core.pools.base_pool import ConnectionPool, ConnectionPoolConfig

__all__ = ["TICKS", "plot", "render", "run_all", "table", "write"]

PG_URL = os.environ.get("RESYNC_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
SIZE = 5
SERVICE = 0.01
DEADLINE = 0.25
CONNECTION_TIMEOUT = 1.0
QUEUE_TARGET = 0.05
QUEUE_INTERVAL = 0.5
WARMUP = 1.0
LOADS = (1, 2, 3)
ADAPTIVE_SECONDS = 8.0
#: Seconds after the service-time change from which the adaptive run's p99 is "settled".
SETTLED = 2.0
SAMPLE_EVERY = 0.05
BACKENDS = ("memory", "postgres")
#: Progress ticks of :func:`run_all` with the defaults (cells, then adaptive runs).
TICKS = len(BACKENDS) * (2 * len(LOADS) * 2 + 1)

Call = Callable[[], Awaitable[None]]


def _config(
    name: str, *, managed: bool, adaptive: bool = False, size: int = SIZE
) -> ConnectionPoolConfig:
    return ConnectionPoolConfig(
        pool_name=name,
        # With the adaptive limit, min_size is its floor: 1 leaves it the whole range.
        min_size=1 if adaptive else size,
        max_size=size,
        connection_timeout=CONNECTION_TIMEOUT,
        health_check_interval=0,
        queue_target=QUEUE_TARGET if managed else None,
        queue_interval=QUEUE_INTERVAL if managed else None,
        adaptive_limit=adaptive,
    )


class Service:
    """The per-lease work: a service time that can change mid-run."""

    def __init__(self) -> None:
        self.seconds = SERVICE


@asynccontextmanager
async def _pool(
    backend: str, config: ConnectionPoolConfig, service: Service
) -> AsyncIterator[tuple[ConnectionPool[Any], Call]]:
    if backend == "memory":
        from resync.testing.memory_pool import InMemoryPool

        pool: ConnectionPool[Any] = InMemoryPool(config)
        await pool.initialize()

        async def call() -> None:
            async with pool.get_connection():
                await asyncio.sleep(service.seconds)

    else:
        from resync.core.pools.database.pool import DatabaseConnectionPool

        db = DatabaseConnectionPool(config, PG_URL)
        pool = db
        await pool.initialize()

        async def call() -> None:
            async with db.driver_connection() as conn:
                await conn.fetchval("SELECT pg_sleep($1)", service.seconds)

    try:
        yield pool, call
    finally:
        await pool.close()


class Outcomes:
    """Each call's arrival, latency and how it ended."""

    def __init__(self, measure_from: float) -> None:
        self.measure_from = measure_from
        self.ok: list[float] = []
        #: (start, latency) of each admitted call, for a later window (see admitted_p99_since).
        self.ok_at: list[tuple[float, float]] = []
        self.refused: list[float] = []
        self.timeouts = 0
        self.errors = 0
        self.offered = 0

    async def run(self, call: Call) -> bool:
        """One call; True unless it was refused (overloaded)."""
        start = time.perf_counter()
        counted = start >= self.measure_from
        self.offered += counted
        try:
            await call()
        except PoolOverloadedError:
            if counted:
                self.refused.append(time.perf_counter() - start)
            return False
        except PoolTimeoutError:
            self.timeouts += counted
            return True
        except Exception:
            self.errors += counted
            return True
        if counted:
            latency = time.perf_counter() - start
            self.ok.append(latency)
            self.ok_at.append((start, latency))
        return True

    def admitted_p99_since(self, since: float) -> float | None:
        """p99 (ms) of the admitted calls that started at or after ``since``."""
        later = sorted(latency for start, latency in self.ok_at if start >= since)
        return percentile(later, 0.99) * 1000 if later else None

    def summary(self, seconds: float, capacity: float) -> dict[str, Any]:
        good = sum(1 for latency in self.ok if latency <= DEADLINE)
        ok = sorted(self.ok)
        refused = sorted(self.refused)
        return {
            "offered": self.offered,
            "served": len(ok),
            "refused": len(refused),
            "timeouts": self.timeouts,
            "errors": self.errors,
            "goodput": good / self.offered if self.offered else 0.0,
            "goodput_of_capacity": good / seconds / capacity if capacity else 0.0,
            "refused_p99_ms": percentile(refused, 0.99) * 1000 if refused else None,
            "admitted_p50_ms": percentile(ok, 0.50) * 1000 if ok else None,
            "admitted_p99_ms": percentile(ok, 0.99) * 1000 if ok else None,
        }


async def _open_loop(call: Call, rate: float, seconds: float, outcomes: Outcomes) -> None:
    """Start calls at ``rate`` a second for ``seconds``; wait for all of them."""
    tasks: set[asyncio.Task[bool]] = set()
    begin = time.perf_counter()
    started = 0
    while True:
        elapsed = time.perf_counter() - begin
        if elapsed >= seconds:
            break
        due = int(elapsed * rate) + 1
        while started < due:
            task = asyncio.create_task(outcomes.run(call))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            started += 1
        await asyncio.sleep(min(0.001, max(0.0, (due / rate) - elapsed)))
    if tasks:
        await asyncio.gather(*tasks)


async def _closed_loop(call: Call, callers: int, seconds: float, outcomes: Outcomes) -> None:
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < stop:
            if not await outcomes.run(call):
                await asyncio.sleep(SERVICE)  # refused: back off briefly

    await asyncio.gather(*(caller() for _ in range(callers)))


async def capacity_of(backend: str, seconds: float) -> float:
    """Leases per second a closed loop of ``SIZE`` callers gets (no queueing)."""
    service = Service()
    async with _pool(backend, _config(f"{backend}-capacity", managed=False), service) as (_, call):
        done = 0
        stop = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await call()
                done += 1

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(SIZE)))
        return done / (time.perf_counter() - began)


async def cell(
    backend: str, mode: str, load: int, managed: bool, capacity: float, duration: float
) -> dict[str, Any]:
    """One measurement: ``mode`` (open/closed) at ``load`` x capacity."""
    service = Service()
    config = _config(f"{backend}-{mode}-{load}", managed=managed)
    async with _pool(backend, config, service) as (pool, call):
        began = time.perf_counter()
        outcomes = Outcomes(began + WARMUP)
        total = WARMUP + duration
        if mode == "open":
            await _open_loop(call, load * capacity, total, outcomes)
        else:
            await _closed_loop(call, load * SIZE, total, outcomes)
        drops = pool.gate.dropped
    record = {
        "backend": backend,
        "mode": mode,
        "load": load,
        "queue_management": managed,
        "capacity": round(capacity, 1),
        "seconds": duration,
        "queue_drops": drops,
        **outcomes.summary(duration, capacity),
    }
    emit("tick", workload=f"overload {backend} {mode} {load}x", impl="on" if managed else "off")
    return record


async def adaptive(backend: str, capacity: float, seconds: float) -> dict[str, Any]:
    """A pool of ``2 * SIZE`` at its capacity (2x the ``SIZE`` pool's), open loop;
    halfway the service time doubles (the load is then 2x what it can serve)."""
    service = Service()
    config = _config(f"{backend}-adaptive", managed=True, adaptive=True, size=2 * SIZE)
    async with _pool(backend, config, service) as (pool, call):
        began = time.perf_counter()
        half = seconds / 2
        outcomes = Outcomes(began + half)  # the figures after the change
        trace: list[tuple[float, int]] = []

        async def sample() -> None:
            while True:
                now = time.perf_counter() - began
                if now >= half and service.seconds == SERVICE:
                    service.seconds = 2 * SERVICE
                trace.append((round(now, 3), pool.gate.capacity))
                await asyncio.sleep(SAMPLE_EVERY)

        sampler = asyncio.create_task(sample())
        try:
            await _open_loop(call, 2 * capacity, seconds, outcomes)
        finally:
            sampler.cancel()
        limit = pool.adaptive_limit
        limit_snapshot = limit.snapshot() if limit is not None else {}
    after = [(t, v) for t, v in trace if t >= half]
    last = [v for t, v in after if t >= seconds - 1.0] or [SIZE]
    final = sum(last) / len(last)
    settle, back = _settling(after, final, half)
    emit("tick", workload=f"overload {backend} adaptive", impl="on")
    return {
        "backend": backend,
        "mode": "adaptive",
        "capacity": round(capacity, 1),
        "seconds": seconds,
        "service_ms": [SERVICE * 1000, 2 * SERVICE * 1000],
        "max_size": 2 * SIZE,
        "limit_before": [v for t, v in trace if t < half][-1:] or None,
        "limit_min_after": min((v for _, v in after), default=None),
        "limit_final": round(final, 2),
        "settle_s": settle,
        "back_at_final_s": back,
        "samples": limit_snapshot.get("samples"),
        "drops": limit_snapshot.get("drops"),
        "trace": trace,
        # After the change the pool of 2 x SIZE serves what SIZE served before.
        **outcomes.summary(half, capacity),
        # Once the limit has settled (SETTLED s after the change): is p99 back under
        # the queue's own bound, 2 x queue_target + the (new) service time?
        "admitted_p99_settled_ms": outcomes.admitted_p99_since(began + half + SETTLED),
        "admitted_p99_bound_ms": (2 * QUEUE_TARGET + 2 * SERVICE) * 1000,
    }


def _settling(
    after: list[tuple[float, int]], final: float, half: float
) -> tuple[float | None, float | None]:
    """Seconds from the change until the limit stays within 10 % of ``final``,
    and until it stays at ``round(final)`` itself (None: never)."""
    settle = back = None
    for index, (t, _) in enumerate(after):
        rest = [v for _, v in after[index:]]
        if settle is None and all(abs(v - final) <= 0.1 * final for v in rest):
            settle = round(t - half, 3)
        if back is None and all(v == round(final) for v in rest):
            back = round(t - half, 3)
    return settle, back


async def run_all(
    backends: tuple[str, ...] = BACKENDS,
    duration: float = 2.0,
    adaptive_seconds: float = ADAPTIVE_SECONDS,
) -> list[dict[str, Any]]:
    """Every cell of every backend, then the adaptive runs; the records."""
    records: list[dict[str, Any]] = []
    for backend in backends:
        capacity = await capacity_of(backend, 1.0)
        for mode in ("open", "closed"):
            for load in LOADS:
                for managed in (False, True):
                    records.append(await cell(backend, mode, load, managed, capacity, duration))
        if adaptive_seconds:
            records.append(await adaptive(backend, capacity, adaptive_seconds))
    return records


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def table(records: list[dict[str, Any]]) -> list[str]:
    """The markdown tables: the load cells, then the adaptive runs."""
    lines = [
        "| backend | load | arrivals | queue mgmt | offered | served | refused | timeouts "
        "| goodput | goodput / capacity | refused p99 ms | admitted p50 ms | admitted p99 ms "
        "| dropped from queue |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r["mode"] == "adaptive":
            continue
        lines.append(
            f"| {r['backend']} | {r['load']}x | {r['mode']} | "
            f"{'on' if r['queue_management'] else 'off'} | {r['offered']} | {r['served']} | "
            f"{r['refused']} | {r['timeouts']} | {r['goodput']:.0%} | "
            f"{r['goodput_of_capacity']:.0%} | {_ms(r['refused_p99_ms'])} | "
            f"{_ms(r['admitted_p50_ms'])} | {_ms(r['admitted_p99_ms'])} | {r['queue_drops']} |"
        )
    adaptive_rows = [r for r in records if r["mode"] == "adaptive"]
    if adaptive_rows:
        lines += [
            "",
            "| backend | max_size | service ms | limit before | lowest after | final "
            "| within 10 % after s | back at final after s | samples | drops "
            "| goodput after | goodput / capacity after | admitted p99 ms after "
            f"| admitted p99 ms from {SETTLED:g} s after | bound ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in adaptive_rows:
            before = r["limit_before"][0] if r["limit_before"] else ""
            settle = "" if r["settle_s"] is None else f"{r['settle_s']:.2f}"
            back = r.get("back_at_final_s")
            back_text = "" if back is None else f"{back:.2f}"
            lines.append(
                f"| {r['backend']} | {r['max_size']} | "
                f"{r['service_ms'][0]:g} -> {r['service_ms'][1]:g} | "
                f"{before} | {r['limit_min_after']} | {r['limit_final']} | {settle} | "
                f"{back_text} | {r['samples']} | {r['drops']} | {r['goodput']:.0%} | "
                f"{r['goodput_of_capacity']:.0%} | {_ms(r['admitted_p99_ms'])} | "
                f"{_ms(r.get('admitted_p99_settled_ms'))} | {_ms(r.get('admitted_p99_bound_ms'))} |"
            )
    return lines


def render(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """``overload.md``."""
    md = [
        "# Overload: goodput at 1x-3x capacity, queue management off and on",
        "",
        f"{meta.get('when', '')}, Python {meta.get('python', '')}, {meta.get('cpus', '')} CPUs, "
        f"{meta.get('note', '')}",
        "",
        f"Pools of {SIZE} connections, {SERVICE * 1000:g} ms service per lease (in-memory: "
        f"`asyncio.sleep`; PostgreSQL: `SELECT pg_sleep` on a driver lease); client deadline "
        f"{DEADLINE * 1000:g} ms; `connection_timeout` {CONNECTION_TIMEOUT:g} s; queue "
        f"management `queue_target` {QUEUE_TARGET * 1000:g} ms, `queue_interval` "
        f"{QUEUE_INTERVAL:g} s. Figures over the calls that arrived after {WARMUP:g} s. "
        "How it is measured: `benchmarks/overload.py`.",
        "",
        *table(records),
        "",
    ]
    return "\n".join(md)


def plot(records: list[dict[str, Any]], out_dir: Path) -> Path | None:
    """``overload.png``: open-loop goodput / capacity by load, queue management
    off and on, per backend; and the adaptive limit over time (None if nothing
    to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [r for r in records if r["mode"] == "open"]
    adaptive_rows = [r for r in records if r["mode"] == "adaptive"]
    if not cells and not adaptive_rows:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for backend in dict.fromkeys(r["backend"] for r in cells):
        for managed, style in ((False, "--"), (True, "-")):
            line = [
                r for r in cells if r["backend"] == backend and r["queue_management"] is managed
            ]
            left.plot(
                [r["load"] for r in line],
                [100 * r["goodput_of_capacity"] for r in line],
                style,
                marker="o",
                label=f"{backend}, queue management {'on' if managed else 'off'}",
            )
    left.set(xlabel="offered load (x capacity)", ylabel="goodput within 250 ms (% of capacity)")
    left.set_xticks(list(LOADS))
    left.set_ylim(0, 110)
    left.legend(fontsize=8)
    left.set_title("open loop")
    for r in adaptive_rows:
        times = [t for t, _ in r["trace"]]
        right.step(times, [v for _, v in r["trace"]], where="post", label=r["backend"])
        right.axvline(r["seconds"] / 2, color="grey", linestyle=":")
    right.set(xlabel="seconds (service time doubles at the dotted line)", ylabel="adaptive limit")
    right.set_title("adaptive limit (Gradient2)")
    if adaptive_rows:
        right.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "overload.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write(records: list[dict[str, Any]], out_dir: Path, note: str = "") -> Path:
    """Write ``overload.json`` and ``overload.md`` into ``out_dir``; the .md path."""
    meta = {**environment(), "note": note}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "overload.json").write_text(
        json.dumps({"meta": meta, "records": records}, indent=1) + "\n"
    )
    drawn = plot(records, out_dir)
    path = out_dir / "overload.md"
    path.write_text(render(records, meta) + (f"\n![overload]({drawn.name})\n" if drawn else ""))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", default="memory,postgres")
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per cell")
    parser.add_argument("--adaptive-seconds", type=float, default=ADAPTIVE_SECONDS)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=ARTIFACTS)
    args = parser.parse_args()
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    records = asyncio.run(run_all(backends, args.duration, args.adaptive_seconds))
    path = write(records, args.out, args.note)
    print("\n".join(table(records)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
