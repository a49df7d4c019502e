"""An httpx load generator for the service benchmark, run in its own process.

Used when wrk is not installed. ``concurrency`` closed-loop workers share one
``httpx.AsyncClient`` with as many connections, each sending ``GET`` (or
``PUT``) ``/api/kv/bench-<n>`` for a random ``n`` below ``--keys``; a reply
that is not 2xx counts as an error. Prints one JSON object: the measured
round (see :func:`benchmarks.harness.steady_loop`).

    python -m benchmarks.loadgen --url http://127.0.0.1:8000 --method GET \
        --concurrency 100 --duration 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random

import httpx

from benchmarks.harness import steady_loop

__all__ = ["drive"]


async def drive(
    url: str, method: str, concurrency: int, duration: float, keys: int
) -> dict[str, float]:
    """Measure one round against ``url``; the figures as a JSON-able dict."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    body = {"value": "v" * 32}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        pick = random.randrange

        async def op() -> None:
            path = f"/api/kv/bench-{pick(keys)}"
            if method == "PUT":
                response = await client.put(path, json=body)
            else:
                response = await client.get(path)
            if response.status_code >= 300:
                raise RuntimeError(f"HTTP {response.status_code}")

        sample = await steady_loop(op, concurrency=concurrency, duration=duration)
    return {
        "ops": sample.ops,
        "seconds": sample.seconds,
        "errors": sample.errors,
        "mean": sample.mean,
        "p50": sample.p50,
        "p99": sample.p99,
        "stall_ms": sample.stall_ms,
        "gc_ms": sample.gc_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--method", choices=["GET", "PUT"], default="GET")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--keys", type=int, default=1000)
    args = parser.parse_args()
    work = drive(args.url, args.method, args.concurrency, args.duration, args.keys)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(work)
    else:
        result = uvloop.run(work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
