"""The worker-pool example against real subprocesses (seed 004: kill a worker mid-request)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from examples.worker_pool import Worker, WorkerDied, WorkerError, worker_pool
from resync.core.exceptions import PoolTimeoutError, ResourceBroken
from resync.core.pools.pool_manager import ConnectionPoolManager
from resync.core.pools.resource.pool import ResourcePool
from resync.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def child_pids() -> set[int]:
    """Processes whose parent is this one, zombies included (read from /proc)."""
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces, so split after ')'.
        if stat.rpartition(")")[2].split()[1] == me:
            found.add(int(entry))
    return found


def reaped(pid: int) -> bool:
    """True once ``pid`` is gone entirely: exited *and* waited for (no zombie)."""
    return not Path(f"/proc/{pid}").exists()


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def make_pool(**options: Any) -> ResourcePool[Worker]:
    options.setdefault("min_size", 2)
    options.setdefault("max_size", 2)
    options.setdefault("health_check_interval", 0.0)
    return worker_pool("workers", **options)


@pytest.fixture
async def pool() -> AsyncIterator[ResourcePool[Worker]]:
    async with make_pool() as opened:
        yield opened  # type: ignore[misc]


async def test_workers_answer_requests_on_separate_processes(pool: ResourcePool[Worker]) -> None:
    async with pool.get_connection() as a, pool.get_connection() as b:
        first, second = await asyncio.gather(a.request("pid"), b.request("pid"))
        assert first != second
        assert {first, second} <= child_pids()
        assert await a.request("echo", value={"x": [1, 2]}) == {"x": [1, 2]}
    stats = pool.get_stats_snapshot()
    assert stats["backend"] == "worker"
    assert stats["connection_creations"] == 2 and stats["idle_connections"] == 2


async def test_an_error_answer_is_the_callers_and_the_worker_is_reused(
    pool: ResourcePool[Worker],
) -> None:
    with pytest.raises(WorkerError, match="ValueError: nope"):
        async with pool.get_connection() as worker:
            await worker.request("fail", message="nope")
    assert worker in pool.resources() and not worker.poisoned
    assert await worker.check()
    assert pool.stats.connection_closures == 0


async def test_a_worker_killed_mid_request_is_reaped_and_the_next_checkout_gets_a_fresh_one() -> (
    None
):
    # One worker only: if the dead one were not replaced, nothing could be checked out again.
    async with make_pool(min_size=1, max_size=1) as pool:
        with pytest.raises(WorkerDied, match="died mid-request") as caught:
            async with pool.get_connection() as victim:
                asyncio.get_running_loop().call_later(0.2, os.kill, victim.pid, signal.SIGKILL)
                await victim.request("sleep", seconds=30)
        assert isinstance(caught.value, ResourceBroken)
        # Closed before the lease returned: the process was killed and waited for.
        assert victim.process.returncode == -signal.SIGKILL
        assert reaped(victim.pid) and victim.pid not in child_pids()
        assert pool.closed_by_reason["broken"] == 1
        async with pool.get_connection() as fresh:
            assert fresh is not victim and fresh.pid != victim.pid
            assert await fresh.request("pid") == fresh.pid
        assert pool.resources() == [fresh]
        assert pool.stats.connection_creations == 2 and pool.stats.connection_closures == 1


async def test_with_spare_workers_a_killed_one_is_replaced_in_the_background(
    pool: ResourcePool[Worker],
) -> None:
    with pytest.raises(WorkerDied):
        async with pool.get_connection() as victim:
            asyncio.get_running_loop().call_later(0.1, os.kill, victim.pid, signal.SIGKILL)
            await victim.request("sleep", seconds=30)
    async with pool.get_connection() as other:
        assert await other.request("ping") == "pong"
    await eventually(lambda: len(pool.resources()) == 2)  # back to min_size
    assert victim not in pool.resources()
    assert {w.pid for w in pool.resources()} <= child_pids()


async def test_a_worker_that_died_while_idle_fails_validation_and_is_replaced() -> None:
    async with make_pool(min_size=1, max_size=1) as pool:
        (idle,) = pool.resources()
        os.kill(idle.pid, signal.SIGKILL)
        async with pool.get_connection() as worker:
            assert worker is not idle
            assert await worker.request("ping") == "pong"
        await eventually(lambda: reaped(idle.pid))
        assert pool.closed_by_reason["validation"] == 1


async def test_a_worker_that_crashes_on_a_request_is_replaced(pool: ResourcePool[Worker]) -> None:
    with pytest.raises(WorkerDied):
        async with pool.get_connection() as worker:
            await worker.request("crash")
    assert worker.process.returncode == 70 and reaped(worker.pid)


async def test_checkout_times_out_when_every_worker_is_busy() -> None:
    async with make_pool(connection_timeout=0.3) as pool:
        busy = asyncio.Event()

        async def work() -> None:
            async with pool.get_connection() as worker:
                busy.set()
                await worker.request("sleep", seconds=0.8)

        workers = [asyncio.create_task(work()) for _ in range(2)]
        await busy.wait()
        with pytest.raises(
            PoolTimeoutError, match="Timeout acquiring connection from pool 'workers'"
        ):
            async with pool.get_connection():
                pass
        await asyncio.gather(*workers)
        async with pool.get_connection() as worker:  # free again: no worker was lost
            assert await worker.request("ping") == "pong"
        assert pool.stats.connection_closures == 0


async def test_cancelling_a_request_in_flight_kills_that_worker_and_frees_its_slot(
    pool: ResourcePool[Worker],
) -> None:
    started = asyncio.Event()
    held: list[Worker] = []

    async def slow_call() -> None:
        async with pool.get_connection() as worker:
            held.append(worker)
            started.set()
            await worker.request("sleep", seconds=30)

    task = asyncio.create_task(slow_call())
    await started.wait()
    await asyncio.sleep(0.1)  # the request is on its way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (victim,) = held
    assert victim.process.returncode == -signal.SIGKILL  # unknown state: killed, not reused
    assert reaped(victim.pid)
    assert pool.closed_by_reason["cancelled"] == 1
    assert pool.stats.active_connections == 0
    async with pool.get_connection() as a, pool.get_connection() as b:
        assert victim not in (a, b)
        assert await a.request("ping") == await b.request("ping") == "pong"


async def test_a_request_timeout_leaves_the_worker_poisoned_and_the_pool_closes_it(
    pool: ResourcePool[Worker],
) -> None:
    with pytest.raises(TimeoutError):
        async with pool.get_connection() as worker:
            async with asyncio.timeout(0.2):
                await worker.request("sleep", seconds=30)
    assert worker.poisoned and reaped(worker.pid)
    assert pool.closed_by_reason["broken"] + pool.closed_by_reason["reset"] == 1


async def test_close_terminates_and_reaps_every_worker() -> None:
    before = child_pids()
    pool = make_pool(min_size=3, max_size=4)
    await pool.initialize()
    lease = pool.get_connection()
    held = await lease.__aenter__()
    await held.request("ping")
    pids = {w.pid for w in pool.resources()}
    assert len(pids) == 3 and pids <= child_pids()
    await lease.__aexit__(None, None, None)
    await pool.close()
    assert all(reaped(pid) for pid in pids)
    assert not (child_pids() - before)


async def test_registered_with_the_manager_it_is_health_checked_and_closed() -> None:
    settings = Settings(_env_file=None, DB_POOL_MIN_SIZE=0)  # type: ignore[call-arg]
    pool = make_pool(min_size=1, max_size=2)
    async with ConnectionPoolManager(settings, check_budget_on_start=False) as manager:
        await manager.register("workers", pool)
        assert (await manager.health_check_all())["workers"] is True
        pids = {w.pid for w in pool.resources()}
        assert manager.get_pool_stats()["workers"]["backend"] == "worker"
    assert pids and all(reaped(pid) for pid in pids)


def test_the_example_runs_as_a_program() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.worker_pool"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the caller got WorkerDied" in result.stdout
    assert "(replaced: True)" in result.stdout
    assert "workers left running: 0" in result.stdout
