"""End to end: ``/api/kv`` through ``resync serve`` on PostgreSQL and Redis.

The service runs as ``resync serve --loop <loop>`` in its own process (one
worker; database and Redis pools of 10, 30 s acquire timeout, logging at
WARNING so no access log is written). A load generator in a second process
drives it: wrk when installed (``scripts/ensure-bench-tools.sh`` installs it
with apt-get), else :mod:`benchmarks.loadgen` (httpx).

- ``GET /api/kv/bench-<n>``, ``n`` random below ``KEYS``, all stored before
  (mostly answered from the Redis cache, with a database lease per request,
  as the route's dependencies take one);
- ``PUT /api/kv/bench-<n>``: an upsert, commit, then a cache invalidation.

A reply that is not 2xx, and any socket error or timeout, is an error.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import CONCURRENCY, Row, Sample, emit, row_from_samples
from tests.helpers.net import free_port, wait_for_port

__all__ = ["PLAN", "run_service"]

PG_URL = os.environ.get("RESYNC_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RESYNC_BENCH_SERVICE_REDIS_URL", "redis://127.0.0.1:6379/14")
KEYS = 1000
ROOT = Path(__file__).resolve().parent.parent
PLAN: list[tuple[str, tuple[str, ...]]] = [
    ("service GET /api/kv", ("resync serve",)),
    ("service PUT /api/kv", ("resync serve",)),
]

_LUA = """
math.randomseed(os.time())
local body = '{"value": "%s"}'
request = function()
  local path = "/api/kv/bench-" .. math.random(0, %d)
  if "%s" == "PUT" then
    return wrk.format("PUT", path, {["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", path)
end
"""
_SETTINGS_PREFIXES = ("DATABASE_", "DB_", "REDIS_", "HTTP_", "TWS_", "POOL_")
_SERVE = (sys.executable, "-m", "resync.cli", "serve", "--host", "127.0.0.1")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str, duration: float) -> Sample:
    """The figures of one ``wrk --latency`` run."""
    mean = re.search(r"Latency\s+(\S+)", output)
    p50 = re.search(r"\s50%\s+(\S+)", output)
    p99 = re.search(r"\s99%\s+(\S+)", output)
    done = re.search(r"(\d+) requests in", output)
    if not (mean and p50 and p99 and done):
        raise ValueError(f"unexpected wrk output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(bad.group(1)) if bad else 0
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    ops = round(float(rate.group(1)) * duration) if rate else int(done.group(1))
    return Sample(
        ops=ops,
        seconds=duration,
        errors=errors,
        mean=_seconds(mean.group(1)),
        p50=_seconds(p50.group(1)),
        p99=_seconds(p99.group(1)),
    )


class Service:
    """``resync serve`` in a child process, configured for PostgreSQL and Redis."""

    def __init__(self, loop: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Only what is set here configures the service, not the caller's environment.
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(_SETTINGS_PREFIXES)},
            "DATABASE_URL": PG_URL,
            "REDIS_URL": REDIS_URL,
            "REDIS_REQUIRED": "true",
            "DB_POOL_MIN_SIZE": "10",
            "DB_POOL_MAX_SIZE": "10",
            "DB_POOL_CONNECT_TIMEOUT": "30",
            "REDIS_POOL_MAX_SIZE": "10",
            "REDIS_POOL_CONNECT_TIMEOUT": "30",
            "LOG_LEVEL": "WARNING",
            "WORKERS": "1",
        }
        self._workdir = tempfile.TemporaryDirectory(prefix="resync-bench-")  # no stray .env
        self.proc = subprocess.Popen(
            [*_SERVE, "--port", str(self.port), "--loop", loop],
            cwd=self._workdir.name,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, timeout=30)
        deadline = time.monotonic() + 30
        while httpx.get(f"{self.url}/health/ready", timeout=5).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("resync serve did not become ready within 30 s")
            time.sleep(0.2)

    def populate(self) -> None:
        """Store every key once, so GETs find them."""

        async def put_all() -> None:
            async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
                for first in range(0, KEYS, 20):
                    replies = await asyncio.gather(
                        *(
                            client.put(f"/api/kv/bench-{n}", json={"value": "v" * 32})
                            for n in range(first, min(first + 20, KEYS))
                        )
                    )
                    for reply in replies:
                        reply.raise_for_status()

        asyncio.run(put_all())

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until the requests a load generator left behind are answered.

        wrk closes its connections when its time is up, but the service still
        answers every request it had read (up to one per connection), and the
        next round must not queue behind them.
        """
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while time.monotonic() < deadline:
                pools = client.get("/pools").json()["pools"]
                if all(
                    p.get("active_connections", 0) == 0 and p.get("waiting_connections", 0) == 0
                    for p in pools.values()
                ):
                    return
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._workdir.cleanup()


def _wrk_round(url: str, method: str, concurrency: int, duration: int, script: Path) -> Sample:
    # wrk takes whole seconds only.
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "30s"]
    command += ["--latency", "-s", str(script), url]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    return parse_wrk(result.stdout, duration)


def _httpx_round(url: str, method: str, concurrency: int, duration: int) -> Sample:
    command = [sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--method", method]
    command += ["--concurrency", str(concurrency), "--duration", str(duration), "--keys", str(KEYS)]
    result = subprocess.run(
        command, capture_output=True, text=True, check=True, cwd=ROOT, timeout=180
    )
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return Sample(**data)


def run_service(loop: str, rounds: int, duration: float) -> list[Row]:
    """Both ``/api/kv`` workloads at every concurrency, ``rounds`` rounds each.

    A round lasts ``duration`` seconds, rounded to whole seconds (all wrk
    takes), and three times that at 1,000 connections: one pass through the
    service's queue then takes a second or more, and a run must hold several.
    """
    seconds = max(1, round(duration))
    wrk = shutil.which("wrk")
    driver = "wrk" if wrk else "httpx loadgen"
    service = Service(loop)
    rows: list[Row] = []
    try:
        service.populate()
        with tempfile.TemporaryDirectory() as tmp:
            for workload, (impl,) in PLAN:
                method = workload.split()[1]
                script = Path(tmp) / f"{method}.lua"
                script.write_text(_LUA % ("v" * 32, KEYS - 1, method))

                def one(
                    conc: int, seconds: int, method: str = method, script: Path = script
                ) -> Sample:
                    if wrk:
                        sample = _wrk_round(service.url, method, conc, seconds, script)
                    else:
                        sample = _httpx_round(service.url, method, conc, seconds)
                    service.wait_idle()
                    return sample

                one(100, 1)  # warm-up: caches, prepared statements, connections
                for conc in CONCURRENCY:
                    samples = []
                    for _ in range(rounds):
                        samples.append(one(conc, seconds * (3 if conc >= 1000 else 1)))
                        emit("tick", workload=workload, impl=impl, concurrency=conc)
                    row = row_from_samples("service", workload, impl, conc, loop, samples)
                    row.extra["load_generator"] = driver
                    rows.append(row)
                    emit("row", row=row.as_dict())
    finally:
        service.stop()
    return rows
