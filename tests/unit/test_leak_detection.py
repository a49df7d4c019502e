"""Leak detection: a lease held past ``leak_detection_threshold`` is reported.

The warning names the task holding the lease and shows the caller's stack
where it was acquired (not resync's or asyncio's frames); a second warning
follows when the lease is finally returned; each leak is counted once in
``stats.leaks_detected`` and exported as ``resync_pool_leaks_total``. With the
threshold at 0 nothing is armed at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import generate_latest

from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.kernel import lease as lease_module
from resync.core.pools.manager.specs import pool_specs
from resync.core.pools.pool_manager import ConnectionPoolManager
from resync.core.prometheus import build_registry
from resync.settings import Settings
from resync.testing import InMemoryPool

THRESHOLD = 0.05


@pytest.fixture
async def pool() -> AsyncIterator[InMemoryPool]:
    config = ConnectionPoolConfig(
        pool_name="leaky", min_size=1, max_size=2, leak_detection_threshold=THRESHOLD
    )
    async with InMemoryPool(config) as opened:
        yield opened


async def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def leak_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "resync.pool" and r.levelno == logging.WARNING
    ]


async def report_writer_job(pool: InMemoryPool, release: asyncio.Event) -> None:
    await take_a_connection_for_the_report(pool, release)


async def take_a_connection_for_the_report(pool: InMemoryPool, release: asyncio.Event) -> None:
    async with pool.get_connection():  # the line the warning must point at
        await release.wait()


async def test_lease_held_past_the_threshold_warns_with_the_holder_task_and_its_stack(
    pool: InMemoryPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resync.pool")
    release = asyncio.Event()
    task = asyncio.create_task(report_writer_job(pool, release), name="report-writer")
    await wait_until(lambda: pool.stats.leaks_detected == 1)

    [warning] = leak_warnings(caplog)
    assert "pool 'leaky'" in warning
    assert "'report-writer'" in warning
    assert "possible leak" in warning
    stack = warning.split("Acquired at (most recent call last):\n", 1)[1]
    # The caller's frames, outermost first, with their source lines ...
    assert stack.index("report_writer_job") < stack.index("take_a_connection_for_the_report")
    assert "async with pool.get_connection():  # the line the warning must point at" in stack
    assert __file__ in stack
    # ... and nothing of resync's lease machinery or of the event loop.
    assert "resync/core/pools" not in stack
    assert "asyncio" not in stack

    release.set()
    await task


async def test_leaked_lease_warns_again_when_it_is_returned(
    pool: InMemoryPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resync.pool")
    release = asyncio.Event()
    task = asyncio.create_task(report_writer_job(pool, release), name="report-writer")
    await wait_until(lambda: pool.stats.leaks_detected == 1)
    release.set()
    await task

    first, second = leak_warnings(caplog)
    assert "possible leak" in first
    assert "'report-writer' returned after" in second
    assert f"leak threshold {THRESHOLD:g}s" in second
    assert pool.stats.leaks_detected == 1  # one leak, counted once
    assert pool.get_stats_snapshot()["leaks_detected"] == 1


async def test_lease_returned_within_the_threshold_is_not_reported(
    pool: InMemoryPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resync.pool")
    for _ in range(20):
        async with pool.get_connection():
            pass
    await asyncio.sleep(THRESHOLD * 3)  # any timer left behind would fire now
    assert leak_warnings(caplog) == []
    assert pool.stats.leaks_detected == 0


async def test_leak_the_timer_had_no_chance_to_see_is_reported_on_return(
    pool: InMemoryPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resync.pool")
    async with pool.get_connection():
        # Blocking the loop keeps the timer from running before the return.
        time.sleep(THRESHOLD * 2)  # noqa: ASYNC251
    first, second = leak_warnings(caplog)
    assert "possible leak" in first and "Acquired at" in first
    assert "returned after" in second
    assert pool.stats.leaks_detected == 1


async def test_leaks_are_exported_as_resync_pool_leaks_total(
    pool: InMemoryPool,
) -> None:
    release = asyncio.Event()
    task = asyncio.create_task(report_writer_job(pool, release))
    await wait_until(lambda: pool.stats.leaks_detected == 1)
    release.set()
    await task
    registry = build_registry(lambda: {"leaky": pool})
    text = generate_latest(registry).decode()
    assert (
        'resync_pool_leaks_total{backend="memory",'
        'db_client_connection_pool_name="leaky",pool="leaky"} 1.0'
    ) in text


async def test_disabled_detection_arms_nothing_on_the_lease_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_watch(*args: object) -> None:
        raise AssertionError("a leak watch was armed with the threshold at 0")

    monkeypatch.setattr(lease_module, "LeakWatch", no_watch)
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    real_call_later = loop.call_later

    def counting_call_later(delay: float, *args: object, **kwargs: object) -> object:
        timers.append(delay)
        return real_call_later(delay, *args, **kwargs)  # type: ignore[arg-type]

    config = ConnectionPoolConfig(pool_name="quiet", min_size=1, max_size=1)
    assert config.leak_detection_threshold == 0
    async with InMemoryPool(config) as quiet:
        monkeypatch.setattr(loop, "call_later", counting_call_later)
        for _ in range(10):
            lease = quiet.get_connection()
            async with lease:
                assert lease._leak is None
        monkeypatch.undo()
    assert timers == []
    assert quiet.stats.leaks_detected == 0


def test_threshold_settings_reach_every_pool_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_POOL_LEAK_DETECTION_THRESHOLD", "2.5")
    monkeypatch.setenv("REDIS_POOL_LEAK_DETECTION_THRESHOLD", "3")
    monkeypatch.setenv("HTTP_POOL_LEAK_DETECTION_THRESHOLD", "0")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        REDIS_URL="redis://127.0.0.1:6379/15",
        TWS_BASE_URL="http://127.0.0.1:9",
    )
    thresholds = {s.name: s.config.leak_detection_threshold for s in pool_specs(settings)}
    assert thresholds == {"database": 2.5, "redis": 3.0, "tws_http": 0.0}


def test_negative_threshold_setting_is_refused_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="DB_POOL_LEAK_DETECTION_THRESHOLD"):
        Settings(_env_file=None, DB_POOL_LEAK_DETECTION_THRESHOLD=-1)  # type: ignore[call-arg]


async def test_manager_pool_from_settings_reports_a_leak(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="resync.pool")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        DB_POOL_LEAK_DETECTION_THRESHOLD=THRESHOLD,
        DB_POOL_MIN_SIZE=1,
    )
    async with ConnectionPoolManager(settings, check_budget_on_start=False) as manager:
        database = manager.pool("database")
        async with database.get_connection():
            await wait_until(lambda: database.stats.leaks_detected == 1)
    warnings = leak_warnings(caplog)
    assert len(warnings) == 2
    assert "pool 'database'" in warnings[0] and "test_leak_detection.py" in warnings[0]
