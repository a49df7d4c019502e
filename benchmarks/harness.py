"""The suite's measuring core: steady-state closed loops, paired rounds, progress events.

A *round* starts ``concurrency`` workers that call ``op()`` in a loop, all
at once. Measuring starts once as many operations finished as there are
workers (at least ``WARMUP`` s, at most ``MAX_WARMUP`` s): until then the
first wave is still being served, and it is not the steady state -- work an
implementation does before queueing (httpx builds every request before its
pool queues it) was done for the whole wave at the start, so that wave
drains faster than the steady state serves. Throughput counts operations
finished within ``duration`` seconds; latencies are those of every
operation finished from then on, including the ones still in flight when
the time is up (no new ones start, so they finish), however long ago they
started: a caller an unfair pool starved through the warm-up shows up in the
tail instead of vanishing from it.

:func:`compare` runs the implementations of one workload in alternating order,
one round each, ``rounds`` times per concurrency: neighbouring rounds see the
same machine, and the resync ÷ baseline ratio is the median of the per-round
ratios. Every other figure of a row is the median over its rounds.

Worker processes report to the orchestrator on stdout, one line per event
(``@@bench {json}``): a ``tick`` after each round, a ``row`` per finished row.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.common import percentile

__all__ = [
    "CONCURRENCY",
    "EVENT_PREFIX",
    "Op",
    "Row",
    "Sample",
    "compare",
    "emit",
    "row_from_samples",
    "settle",
    "steady_loop",
    "ticks",
]

Op = Callable[[], Awaitable[object]]

CONCURRENCY = (1, 10, 100, 1000)
EVENT_PREFIX = "@@bench "
WARMUP = 0.15
MAX_WARMUP = 3.0
STALL_TICK = 0.005


@dataclass
class Sample:
    """One round of one implementation."""

    ops: int
    seconds: float
    errors: int
    mean: float
    p50: float
    p99: float
    #: Longest the loop was late waking a 5 ms ticker during the round
    #: (the process not running, a collection, or a long callback).
    stall_ms: float = 0.0
    #: Time spent in garbage collections during the round.
    gc_ms: float = 0.0

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def p99_over_mean(self) -> float:
        return self.p99 / self.mean if self.mean else 0.0


@dataclass
class Row:
    """One line of the report: medians over ``rounds`` rounds."""

    backend: str
    workload: str
    impl: str
    concurrency: int
    loop: str
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    p99_over_mean: float
    errors: int
    rounds: int
    baseline: str | None = None
    ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        return cls(**data)


def emit(kind: str, **data: Any) -> None:
    """One progress event for the orchestrator (a line on stdout)."""
    sys.stdout.write(EVENT_PREFIX + json.dumps({"event": kind, **data}) + "\n")
    sys.stdout.flush()


def settle() -> None:
    """Collect, then freeze what survives, as a long-running service is after start-up.

    Full collections then skip the set-up heap (drivers, pools, imports);
    otherwise each is a pause of tens of ms that lands on every queued caller.
    """
    gc.collect()
    gc.freeze()


async def steady_loop(
    op: Op,
    *,
    concurrency: int,
    duration: float,
    warmup: float = WARMUP,
) -> Sample:
    """One round: warm up, then measure ``duration`` seconds of completions.

    ``op`` should suspend at least once per call (I/O, or ``asyncio.sleep(0)``):
    one that never does runs in one worker at a time (the round still ends).
    """
    perf = time.perf_counter
    latencies: list[float] = []
    record = latencies.append
    # Set up front (the latest they can be), so an op that never suspends
    # still ends the round; moved earlier once the first wave is through.
    start = perf() + max(warmup, MAX_WARMUP)
    stop = start + duration
    errors = done = finished = 0
    warm = asyncio.Event()

    async def worker() -> None:
        nonlocal errors, done, finished
        while True:
            t0 = perf()
            if t0 >= stop:
                return
            try:
                await op()
            except Exception:
                if perf() >= start:
                    errors += 1
                await asyncio.sleep(0)  # a failing op must not starve the loop
            else:
                t1 = perf()
                if t1 >= start:
                    record(t1 - t0)
                    if t1 < stop:
                        done += 1
            finished += 1
            if finished == concurrency:
                warm.set()

    async def control() -> None:
        nonlocal start, stop
        await asyncio.sleep(warmup)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, start - perf())):
                await warm.wait()
        now = perf()
        if now < start:
            start, stop = now, now + duration

    stall = 0.0

    async def watch() -> None:
        nonlocal stall
        while (t0 := perf()) < stop:
            await asyncio.sleep(STALL_TICK)
            if t0 >= start:
                stall = max(stall, perf() - t0 - STALL_TICK)

    gc_time = [0.0, 0.0]  # total, start of the running collection

    def on_gc(phase: str, info: dict[str, int]) -> None:
        now = perf()
        if phase == "start":
            gc_time[1] = now
        elif gc_time[1] >= start:
            gc_time[0] += now - gc_time[1]

    gc.callbacks.append(on_gc)
    try:
        await asyncio.gather(control(), watch(), *(worker() for _ in range(concurrency)))
    finally:
        gc.callbacks.remove(on_gc)
    latencies.sort()
    return Sample(
        ops=done,
        seconds=duration,
        errors=errors,
        mean=statistics.fmean(latencies) if latencies else 0.0,
        p50=percentile(latencies, 0.50),
        p99=percentile(latencies, 0.99),
        stall_ms=round(stall * 1e3, 2),
        gc_ms=round(gc_time[0] * 1e3, 2),
    )


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def row_from_samples(
    backend: str,
    workload: str,
    impl: str,
    concurrency: int,
    loop: str,
    samples: list[Sample],
) -> Row:
    """The row of ``samples`` (one per round): medians, and errors summed."""
    return Row(
        backend=backend,
        workload=workload,
        impl=impl,
        concurrency=concurrency,
        loop=loop,
        ops_per_s=round(_median([s.ops_per_s for s in samples]), 1),
        p50_ms=round(_median([s.p50 for s in samples]) * 1e3, 4),
        p99_ms=round(_median([s.p99 for s in samples]) * 1e3, 4),
        mean_ms=round(_median([s.mean for s in samples]) * 1e3, 4),
        p99_over_mean=round(_median([s.p99_over_mean for s in samples]), 3),
        errors=sum(s.errors for s in samples),
        rounds=len(samples),
        extra={
            "round_ops_per_s": [round(s.ops_per_s, 1) for s in samples],
            "round_p99_over_mean": [round(s.p99_over_mean, 3) for s in samples],
            "round_max_stall_ms": [s.stall_ms for s in samples],
            "round_gc_ms": [s.gc_ms for s in samples],
        },
    )


async def compare(
    backend: str,
    workload: str,
    ops: dict[str, Op],
    *,
    loop: str,
    rounds: int,
    duration: float,
    pairs: dict[str, str] | None = None,
    concurrency: Sequence[int] = CONCURRENCY,
    warmup: float = WARMUP,
) -> list[Row]:
    """Alternate one round of each implementation, ``rounds`` times per concurrency.

    ``pairs`` maps an implementation to the baseline it wraps; its rows get
    ``ratio``, the median of the per-round ratios of throughput.
    """
    pairs = pairs or {}
    rows: list[Row] = []
    names = list(ops)
    for conc in concurrency:
        samples: dict[str, list[Sample]] = {name: [] for name in names}
        for round_no in range(rounds):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                sample = await steady_loop(
                    ops[name], concurrency=conc, duration=duration, warmup=warmup
                )
                samples[name].append(sample)
                emit("tick", workload=workload, impl=name, concurrency=conc)
        for name in names:
            row = row_from_samples(backend, workload, name, conc, loop, samples[name])
            base = pairs.get(name)
            if base is not None:
                ratios = [
                    ours.ops_per_s / theirs.ops_per_s
                    for ours, theirs in zip(samples[name], samples[base], strict=True)
                    if theirs.ops_per_s
                ]
                row.baseline = base
                row.ratio = round(_median(ratios), 3) if ratios else None
                row.extra["round_ratios"] = [round(r, 3) for r in ratios]
            rows.append(row)
            emit("row", row=row.as_dict())
    return rows


def ticks(impls: int, rounds: int, concurrency: Sequence[int] = CONCURRENCY) -> int:
    """How many ``tick`` events :func:`compare` sends for a workload."""
    return impls * rounds * len(concurrency)
