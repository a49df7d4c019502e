"""GET through bare redis-py / httpx beside the same GET through resync's pools.

- Redis: ``GET key`` through a bare ``redis.asyncio.BlockingConnectionPool``
  (``max_connections=10``) vs ``async with pool.get_connection() as r: await
  r.get(key)`` on a ``RedisConnectionPool`` with ``max_size=10``; the same
  driver options on both sides (``decode_responses``, socket timeouts).
- HTTP: ``GET /ok`` through a bare ``httpx.AsyncClient`` (``Limits(10, 10)``)
  vs a lease of an ``HTTPConnectionPool`` with ``max_size=10``, against the
  test upstream running in a separate process (its own interpreter and loop).

Concurrency 1, 10, 100 and 1,000 closed-loop workers. Each configuration runs
as back-to-back pairs of rounds (one per implementation, order alternating) so
both sides of a pair see the same machine; the pair with the median ratio is
reported, every pair's ratio kept in the JSON.
Targets: ratio (resync ops/s ÷ bare ops/s) >= 0.97 everywhere; resync
p99 ÷ mean <= 1.3 at 1,000.

Run: ``python -m benchmarks.bench_redis_http`` (``--quick`` for a smoke run).
Needs Redis at 127.0.0.1:6379 (database 15; one key, deleted afterwards).
Writes ``artifacts/bench_redis_http.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from benchmarks.common import RunResult, measure, write_report
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.pools.redis_pool import RedisConnectionPool
from tests.helpers.net import free_port, wait_for_port

CONCURRENCY = (1, 10, 100, 1000)
MAX_SIZE = 10
RATIO_TARGET = 0.97
P99_MEAN_TARGET = 1.3
REDIS_URL = os.environ.get("RESYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
KEY = "resync:bench:redis_http"
# Identical driver options on both sides, so only the pools differ.
REDIS_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_timeout": 30.0,
    "socket_connect_timeout": 30.0,
}
ROOT = Path(__file__).resolve().parent.parent

Op = Callable[[], Awaitable[object]]


def pool_config(name: str) -> ConnectionPoolConfig:
    # min_size=1: connections open on demand, as on the bare side. (Ten idle
    # keep-alive connections would cost httpx a readability check each per
    # request at concurrency 1 -- a cost of httpcore, not of the pool.)
    return ConnectionPoolConfig(
        pool_name=name, min_size=1, max_size=MAX_SIZE, connection_timeout=30.0
    )


async def compare(
    workload: str,
    ops: dict[str, Op],
    *,
    rounds: int,
    duration: float,
) -> list[RunResult]:
    """Run ``rounds`` back-to-back pairs of rounds; report the pair with the median ratio.

    The machine is shared: other work steals the CPUs for seconds at a time,
    which moves absolute throughput by 10% or more between rounds. The two
    rounds of a pair run one after the other (in alternating order), so they
    see nearly the same conditions; the pair whose resync/bare ratio is the
    median of all pairs is reported, both of its rows taken from that pair.
    Every pair's ratio is kept in ``extra``.
    """
    results: list[RunResult] = []
    ours, base = "resync", "bare"
    for concurrency in CONCURRENCY:
        pairs: list[dict[str, RunResult]] = []
        for round_no in range(rounds):
            pair: dict[str, RunResult] = {}
            for impl in (base, ours) if round_no % 2 == 0 else (ours, base):
                pair[impl] = await measure(
                    workload, impl, ops[impl], concurrency=concurrency, rounds=1, duration=duration
                )
            pairs.append(pair)
        ratios = [p[ours].ops_per_s / p[base].ops_per_s for p in pairs]
        order = sorted(range(rounds), key=ratios.__getitem__)
        middle = pairs[order[rounds // 2]]
        for impl in (base, ours):
            row = middle[impl]
            row.rounds = rounds
            row.extra = {
                "pair_ratios": [round(r, 3) for r in ratios],
                "all_ops_per_s": [round(p[impl].ops_per_s, 1) for p in pairs],
                "all_p99_over_mean": [round(p[impl].p99_over_mean, 3) for p in pairs],
            }
            results.append(row)
            print(
                f"{workload:6} {impl:8} c={concurrency:<5} {row.ops_per_s:10,.0f} ops/s  "
                f"p50 {row.p50 * 1e3:7.3f} ms  p99 {row.p99 * 1e3:8.3f} ms  "
                f"p99/mean {row.p99_over_mean:5.2f}  errors {row.errors}",
                flush=True,
            )
        print(f"  pair ratios: {', '.join(f'{r:.3f}' for r in ratios)}", flush=True)
    return results


async def bench_redis(rounds: int, duration: float) -> list[RunResult]:
    driver = aioredis.BlockingConnectionPool.from_url(
        REDIS_URL, max_connections=MAX_SIZE, timeout=30.0, **REDIS_OPTIONS
    )
    bare = aioredis.Redis(connection_pool=driver)
    pool = RedisConnectionPool(pool_config("bench-redis"), REDIS_URL, **REDIS_OPTIONS)
    await pool.initialize()
    await bare.set(KEY, "x" * 64)

    async def resync_get() -> object:
        async with pool.get_connection() as client:
            return await client.get(KEY)

    try:
        return await compare(
            "redis GET",
            {"bare": lambda: bare.get(KEY), "resync": resync_get},
            rounds=rounds,
            duration=duration,
        )
    finally:
        await bare.delete(KEY)
        await bare.aclose()
        await driver.aclose()
        await pool.close()


async def bench_http(base_url: str, rounds: int, duration: float) -> list[RunResult]:
    bare = httpx.AsyncClient(
        base_url=base_url,
        limits=httpx.Limits(max_connections=MAX_SIZE, max_keepalive_connections=MAX_SIZE),
        timeout=httpx.Timeout(30.0),
    )
    pool = HTTPConnectionPool(pool_config("bench-http"), base_url)
    await pool.initialize()

    async def bare_get() -> object:
        return (await bare.get("/ok")).status_code

    async def resync_get() -> object:
        async with pool.get_connection() as client:
            return (await client.get("/ok")).status_code

    try:
        return await compare(
            "http GET",
            {"bare": bare_get, "resync": resync_get},
            rounds=rounds,
            duration=duration,
        )
    finally:
        await bare.aclose()
        await pool.close()


def start_upstream() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.upstream", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return proc, f"http://127.0.0.1:{port}"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def verdicts(results: list[RunResult]) -> list[str]:
    """One line per target, judged on medians over all rounds (not one round)."""
    by_key = {(r.workload, r.concurrency, r.impl): r for r in results}
    lines = []
    misses, fairness = [], []
    for (workload, concurrency, impl), res in sorted(by_key.items()):
        if impl != "resync":
            continue
        base = by_key[(workload, concurrency, "bare")]
        ratio = _median(res.extra.get("pair_ratios", []))
        spread = res.extra.get("pair_ratios", [])
        lines.append(
            f"  - {workload} c={concurrency}: median ratio {ratio:.3f} "
            f"(pairs {min(spread):.3f}-{max(spread):.3f})"
        )
        if ratio < RATIO_TARGET:
            misses.append(f"{workload} c={concurrency}: {ratio:.3f}")
        if concurrency == max(CONCURRENCY):
            ours = _median(res.extra.get("all_p99_over_mean", []))
            theirs = _median(base.extra.get("all_p99_over_mean", []))
            mark = "met" if ours <= P99_MEAN_TARGET else "MISSED"
            fairness.append(f"{workload}: resync {ours:.2f} {mark} (bare {theirs:.2f})")
    ratio_line = f"- ratio >= {RATIO_TARGET} (median of the pairs): " + (
        "met in every row" if not misses else "MISSED in " + "; ".join(misses)
    )
    return [
        ratio_line,
        *lines,
        f"- p99/mean at {max(CONCURRENCY)} <= {P99_MEAN_TARGET} (median of the rounds): "
        + "; ".join(fairness),
    ]


async def lease_overhead(cycles: int = 10_000, repeats: int = 5) -> dict[str, float]:
    """CPU per request with no network: bare client vs resync lease (mock transport).

    Throughput on this shared machine moves by 10% between rounds; CPU time per
    request without I/O is steady, so it pins down what the pool itself adds.
    """

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="ok")

    bare = httpx.AsyncClient(base_url="http://upstream.test", transport=httpx.MockTransport(answer))
    pool = HTTPConnectionPool(
        pool_config("bench-mock"), "http://upstream.test", transport=httpx.MockTransport(answer)
    )
    await pool.initialize()

    async def resync_get() -> object:
        async with pool.get_connection() as client:
            return await client.get("/ok")

    async def cpu_per_op(op: Op) -> float:
        for _ in range(500):
            await op()
        start = time.process_time()
        for _ in range(cycles):
            await op()
        return (time.process_time() - start) / cycles

    samples: dict[str, list[float]] = {"bare": [], "resync": []}
    try:
        for _ in range(repeats):
            samples["bare"].append(await cpu_per_op(lambda: bare.get("/ok")))
            samples["resync"].append(await cpu_per_op(resync_get))
    finally:
        await bare.aclose()
        await pool.close()
    bare_us = _median(samples["bare"]) * 1e6
    resync_us = _median(samples["resync"]) * 1e6
    return {"bare_us": round(bare_us, 1), "resync_us": round(resync_us, 1)}


async def main_async(
    rounds: int, duration: float, only: str | None
) -> tuple[list[RunResult], dict[str, float]]:
    # As a long-running service does after start-up: keep full collections
    # from rescanning the import-time heap. Otherwise each one is a 20-30 ms
    # pause that lands on every queued caller at once and sets p99 at 1,000.
    gc.freeze()
    results: list[RunResult] = []
    overhead: dict[str, float] = {}
    if only in (None, "redis"):
        results += await bench_redis(rounds, duration)
    if only in (None, "http"):
        overhead = await lease_overhead()
        proc, base_url = start_upstream()
        try:
            results += await bench_http(base_url, rounds, duration)
        finally:
            proc.terminate()
            proc.wait()
    return results, overhead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per round")
    parser.add_argument("--quick", action="store_true", help="1 round of 0.5 s; no report")
    parser.add_argument("--only", choices=["redis", "http"], help="one workload; no report")
    args = parser.parse_args()
    rounds, duration = (1, 0.5) if args.quick else (args.rounds, args.duration)
    load_before = os.getloadavg()[0]
    results, overhead = asyncio.run(main_async(rounds, duration, args.only))
    load_after = os.getloadavg()[0]
    lines = verdicts(results)
    real = [r for r in results if r.workload == "http GET" and r.impl == "bare"]
    if overhead and real:
        added = overhead["resync_us"] - overhead["bare_us"]
        per_request = 1e6 / min(real, key=lambda r: r.concurrency).ops_per_s
        lines.append(
            f"- HTTP pool cost per request without network (httpx.MockTransport, CPU): "
            f"bare {overhead['bare_us']:.1f} us, resync {overhead['resync_us']:.1f} us, "
            f"so the lease adds {added:.1f} us; a real request takes {per_request:.0f} us "
            f"here (bare, c=1), so the lease is {added / per_request:.1%} of it -- the "
            "HTTP pair ratios spread far wider than that (noise of the shared machine)."
        )
    print("\n".join(lines))
    if args.quick or args.only:
        return
    notes = [
        "Targets:",
        *lines,
        "",
        "`gc.freeze()` is called once before the runs (both sides), as a service "
        "does after start-up: a full collection then skips the import-time heap "
        "(without it, each is a 20-30 ms pause that lands on every queued caller).",
        "",
        "Rows come in pairs measured back to back; each configuration shows the pair "
        "whose resync/bare ratio is the median of all pairs (every pair's ratio, "
        "throughput and p99/mean are in the JSON `extra`).",
        "",
        f"Both sides cap connections at {MAX_SIZE}. The HTTP upstream is "
        "`tests/helpers/upstream.py` in a separate process (uvloop); Redis is the "
        "local server, database 15. Client, upstream and Redis share the machine's "
        "CPUs, so rows differing by a few percent are within run-to-run noise; the "
        f"1-minute load average was {load_before:.2f} before the run and "
        f"{load_after:.2f} after (other work competing for the CPUs shows there).",
        "",
        "p99/mean at 1,000 workers: with a FIFO queue every caller waits about "
        "1000 / throughput, so the tail is set by how steady throughput is over "
        "one queue cycle (a stall of the process adds to every queued caller). "
        "For HTTP one queue cycle (~2 s) is as long as a round, so its 1,000 row "
        "is mostly the start-up wave; the Redis row (cycle ~0.1 s) is the "
        "steady-state figure the target is about.",
    ]
    path = write_report(
        "bench_redis_http",
        "resync Redis and HTTP pools vs bare redis-py and httpx",
        results,
        ours="resync",
        baseline="bare",
        notes=notes,
        extra={
            "targets": {"ratio": RATIO_TARGET, "p99_over_mean_at_1000": P99_MEAN_TARGET},
            "http_cpu_per_request_without_network_us": overhead,
        },
    )
    # The shared harness labels rows as median rounds; here they are the median pair.
    text = path.read_text()
    path.write_text(
        text.replace(
            f"Median of {rounds} rounds.", f"Median of {rounds} back-to-back pairs of rounds."
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
