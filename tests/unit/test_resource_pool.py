"""ResourcePool with in-process fake resources: what is closed, replaced, reused and when."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import generate_latest

from resync.core.exceptions import (
    PoolConfigError,
    PoolError,
    PoolSetupError,
    PoolTimeoutError,
    ResourceBroken,
)
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.pool_manager import ConnectionPoolManager
from resync.core.pools.resource.pool import ResourcePool
from resync.core.prometheus import build_registry
from resync.core.resilience import RetryPolicy
from resync.settings import Settings

_ids = itertools.count(1)


@dataclass(eq=False)
class Thing:
    """A fake resource: valid until told otherwise, dirty after use until reset."""

    id: int = field(default_factory=lambda: next(_ids))
    closed: bool = False
    valid: bool = True
    dirty: bool = False


class Factory:
    """create/close/validate/reset callbacks that record what the pool did."""

    def __init__(self, *, failures: int = 0, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or ConnectionRefusedError("backend refused")
        self.attempts = 0
        self.made: list[Thing] = []
        self.closed: list[Thing] = []
        self.reset_error: Exception | None = None

    async def create(self) -> Thing:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise self.error
        await asyncio.sleep(0)
        thing = Thing()
        self.made.append(thing)
        return thing

    def close(self, thing: Thing) -> None:
        thing.closed = True
        self.closed.append(thing)

    def validate(self, thing: Thing) -> bool:
        return thing.valid and not thing.closed

    async def reset(self, thing: Thing) -> None:
        if self.reset_error is not None:
            raise self.reset_error
        thing.dirty = False

    def open_things(self) -> list[Thing]:
        return [t for t in self.made if not t.closed]


def config(name: str = "things", **values: Any) -> ConnectionPoolConfig:
    values.setdefault("min_size", 1)
    values.setdefault("max_size", 3)
    values.setdefault("connection_timeout", 1.0)
    values.setdefault("health_check_interval", 0.0)
    values.setdefault("idle_timeout", 0.0)
    values.setdefault("max_lifetime", 0.0)
    values.setdefault("drain_timeout", 1.0)
    return ConnectionPoolConfig(pool_name=name, **values)


FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)


def make_pool(factory: Factory, **options: Any) -> ResourcePool[Thing]:
    sizes = {k: options.pop(k) for k in list(options) if k in ConnectionPoolConfig.__slots__}
    options.setdefault("validate", factory.validate)
    options.setdefault("reset", factory.reset)
    options.setdefault("create_retry", FAST_RETRY)
    return ResourcePool(config(**sizes), factory.create, factory.close, **options)


@pytest.fixture
def factory() -> Factory:
    return Factory()


@pytest.fixture
async def pool(factory: Factory) -> AsyncIterator[ResourcePool[Thing]]:
    async with make_pool(factory) as opened:
        yield opened  # type: ignore[misc]


async def eventually(check: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


# --- sizes and setup ---------------------------------------------------------------


async def test_initialize_creates_min_size_resources(factory: Factory) -> None:
    async with make_pool(factory, min_size=2) as pool:
        assert len(factory.made) == 2
        stats = pool.get_stats_snapshot()
        assert stats["connection_creations"] == 2
        assert stats["idle_connections"] == 2
        assert stats["backend"] == "resource"


async def test_min_size_creation_is_retried_with_backoff_then_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    factory = Factory(failures=2)
    with caplog.at_level(logging.WARNING, logger="resync.pool"):
        async with make_pool(factory, min_size=1):
            assert factory.attempts == 3
            assert len(factory.made) == 1
    assert "attempt 1 of 3" in caplog.text and "attempt 2 of 3" in caplog.text


async def test_min_size_creation_failing_every_retry_raises_a_setup_error_naming_the_pool() -> None:
    factory = Factory(failures=100)
    pool = make_pool(factory, min_size=2)
    with pytest.raises(PoolSetupError, match="Failed to setup pool 'things'") as caught:
        await pool.initialize()
    assert "after 3 attempt(s)" in str(caught.value)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert factory.attempts == 6  # 3 tries for each of the two
    assert pool.state.value == "new"
    await pool.close()


async def test_a_partial_setup_closes_what_it_created() -> None:
    factory = Factory()
    calls = 0

    async def create() -> Thing:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("second one fails")
        return await factory.create()

    pool = ResourcePool(
        config(min_size=2),
        create,
        factory.close,
        create_retry=RetryPolicy(max_attempts=1),
    )
    with pytest.raises(PoolSetupError):
        await pool.initialize()
    assert factory.made and all(t.closed for t in factory.made)
    await pool.close()


def test_invalid_options_are_refused_naming_the_pool(factory: Factory) -> None:
    with pytest.raises(PoolConfigError, match=r"overflow must be an integer >= 0.*'things'"):
        make_pool(factory, overflow=-1)
    with pytest.raises(PoolConfigError, match="order must be 'fifo' or 'lifo'"):
        make_pool(factory, order="random")
    with pytest.raises(PoolConfigError, match="create must be a callable"):
        ResourcePool(config(), None, factory.close)  # type: ignore[arg-type]


async def test_sync_callbacks_work_like_async_ones() -> None:
    made: list[Thing] = []
    pool = ResourcePool(
        config(min_size=1), lambda: made.append(Thing()) or made[-1], lambda t: None
    )
    async with pool, pool.get_connection() as thing:
        assert thing is made[0]


# --- checkout and return -------------------------------------------------------------


async def test_a_returned_resource_is_reset_and_reused(
    pool: ResourcePool[Thing], factory: Factory
) -> None:
    async with pool.get_connection() as first:
        first.dirty = True
    async with pool.get_connection() as second:
        assert second is first and not second.dirty
    assert len(factory.made) == 1


async def test_an_ordinary_error_of_the_holder_does_not_close_the_resource(
    pool: ResourcePool[Thing], factory: Factory
) -> None:
    with pytest.raises(ValueError):
        async with pool.get_connection() as thing:
            raise ValueError("the caller's own bug")
    assert not thing.closed
    async with pool.get_connection() as again:
        assert again is thing


async def test_a_resource_failing_validation_is_closed_and_replaced(
    pool: ResourcePool[Thing], factory: Factory
) -> None:
    async with pool.get_connection() as thing:
        pass
    thing.valid = False
    async with pool.get_connection() as replacement:
        assert replacement is not thing and replacement.valid
    assert thing.closed
    assert pool.closed_by_reason["validation"] == 1


async def test_validate_raising_counts_as_a_failed_validation(factory: Factory) -> None:
    def explode(_: Thing) -> bool:
        raise RuntimeError("probe crashed")

    async with make_pool(factory, validate=explode) as pool:
        first = factory.made[0]
        async with pool.get_connection() as thing:
            assert thing is not first
        assert first.closed


async def test_a_resource_whose_reset_raises_is_closed(
    pool: ResourcePool[Thing], factory: Factory
) -> None:
    factory.reset_error = RuntimeError("cannot clean up")
    async with pool.get_connection() as thing:
        pass
    assert thing.closed
    assert pool.closed_by_reason["reset"] == 1
    factory.reset_error = None
    async with pool.get_connection() as fresh:
        assert fresh is not thing


async def test_a_broken_error_closes_the_resource_and_the_error_reaches_the_caller(
    pool: ResourcePool[Thing], factory: Factory
) -> None:
    with pytest.raises(ResourceBroken, match="gone"):
        async with pool.get_connection() as thing:
            raise ResourceBroken("gone")
    assert thing.closed
    assert pool.closed_by_reason["broken"] == 1
    async with pool.get_connection() as fresh:
        assert fresh is not thing


async def test_a_custom_broken_predicate_closes_on_the_errors_it_accepts(factory: Factory) -> None:
    async with make_pool(factory, is_broken=lambda e: isinstance(e, BrokenPipeError)) as pool:
        with pytest.raises(BrokenPipeError):
            async with pool.get_connection() as thing:
                raise BrokenPipeError
        assert thing.closed


async def test_mark_broken_closes_the_resource_on_return(pool: ResourcePool[Thing]) -> None:
    async with pool.get_connection() as thing:
        assert pool.mark_broken(thing)
    assert thing.closed
    assert not pool.mark_broken(thing)


async def test_a_broken_resource_is_replaced_up_to_min_size(factory: Factory) -> None:
    async with make_pool(factory, min_size=2) as pool:
        with pytest.raises(ResourceBroken):
            async with pool.get_connection():
                raise ResourceBroken("x")
        await eventually(lambda: len(factory.open_things()) == 2)
        assert pool.get_stats_snapshot()["connection_closures"] == 1


async def test_a_checkout_racing_the_refill_waits_for_it_instead_of_creating_another(
    factory: Factory,
) -> None:
    async with make_pool(factory, min_size=1, max_size=1) as pool:
        with pytest.raises(ResourceBroken):
            async with pool.get_connection():
                raise ResourceBroken("x")
        async with pool.get_connection() as thing:
            assert thing is factory.made[-1]
        assert len(factory.made) == 2 and pool.stats.connection_closures == 1


async def test_a_holder_cancelled_mid_use_has_its_resource_closed(
    pool: ResourcePool[Thing], factory: Factory
) -> None:
    holding = asyncio.Event()
    held: list[Thing] = []

    async def hold() -> None:
        async with pool.get_connection() as thing:
            held.append(thing)
            holding.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(hold())
    await holding.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert held[0].closed
    assert pool.closed_by_reason["cancelled"] == 1
    assert pool.stats.active_connections == 0 and pool.gate.in_use == 0


async def test_reuse_after_cancel_returns_the_resource_through_reset(factory: Factory) -> None:
    async with make_pool(factory, reuse_after_cancel=True) as pool:
        holding = asyncio.Event()

        async def hold() -> None:
            async with pool.get_connection() as thing:
                thing.dirty = True
                holding.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(hold())
        await holding.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (thing,) = factory.made
        assert not thing.closed and not thing.dirty
        assert pool.get_stats_snapshot()["idle_connections"] == 1


async def test_checkout_times_out_when_every_resource_is_leased(factory: Factory) -> None:
    pool = make_pool(factory, max_size=1, connection_timeout=0.1)
    async with pool, pool.get_connection():
        with pytest.raises(PoolTimeoutError, match="Timeout acquiring connection from pool"):
            async with pool.get_connection():
                pass


async def test_a_creation_outliving_its_timed_out_caller_still_lands_in_the_idle_set() -> None:
    factory = Factory()
    release = asyncio.Event()

    async def slow_create() -> Thing:
        await release.wait()
        return await factory.create()

    pool = ResourcePool(config(min_size=0, connection_timeout=0.05), slow_create, factory.close)
    async with pool:
        with pytest.raises(PoolTimeoutError):
            async with pool.get_connection():
                pass
        release.set()
        await eventually(lambda: pool.get_stats_snapshot()["idle_connections"] == 1)
        async with pool.get_connection() as thing:
            assert thing is factory.made[0]


async def test_a_failing_creation_on_checkout_is_a_pool_error(factory: Factory) -> None:
    async with make_pool(factory, min_size=0) as pool:
        factory.failures = 1
        with pytest.raises(PoolError, match="Could not get a connection from pool 'things'"):
            async with pool.get_connection():
                pass
        assert pool.stats.connection_errors == 1


# --- order, overflow, reaping, lifetime --------------------------------------------------


async def _lease_all(pool: ResourcePool[Thing], n: int) -> list[Thing]:
    """Lease n resources at once and return them in the order they were returned."""
    leases = [pool.get_connection() for _ in range(n)]
    things = [await lease.__aenter__() for lease in leases]
    for lease in leases:
        await lease.__aexit__(None, None, None)
    return things


@pytest.mark.parametrize(("order", "expected"), [("fifo", 0), ("lifo", 2)])
async def test_idle_order_picks_the_oldest_or_the_newest_return(
    factory: Factory, order: str, expected: int
) -> None:
    async with make_pool(factory, min_size=3, order=order) as pool:
        returned = await _lease_all(pool, 3)
        async with pool.get_connection() as thing:
            assert thing is returned[expected]


async def test_overflow_admits_extra_leases_and_closes_them_on_return(factory: Factory) -> None:
    async with make_pool(factory, min_size=0, max_size=2, overflow=1) as pool:
        assert pool.get_stats_snapshot()["capacity"] == 3
        leases = [pool.get_connection() for _ in range(3)]
        things = [await lease.__aenter__() for lease in leases]
        assert len(factory.open_things()) == 3
        for lease in leases:
            await lease.__aexit__(None, None, None)
        assert things[0].closed and not things[1].closed and not things[2].closed
        assert pool.closed_by_reason["overflow"] == 1
        assert pool.get_stats_snapshot()["idle_connections"] == 2


async def test_an_overflow_resource_is_handed_to_a_queued_caller_instead_of_closed(
    factory: Factory,
) -> None:
    async with make_pool(factory, min_size=0, max_size=1, overflow=1) as pool:
        first, second = pool.get_connection(), pool.get_connection()
        a = await first.__aenter__()
        b = await second.__aenter__()
        got: list[Thing] = []
        done = asyncio.Event()

        async def waiter() -> None:
            async with pool.get_connection() as thing:
                got.append(thing)
                await done.wait()

        task = asyncio.create_task(waiter())
        await eventually(lambda: pool.gate.waiting == 1)
        await first.__aexit__(None, None, None)  # two open > max_size, but a caller waits
        await eventually(lambda: bool(got))
        assert got[0] is a and not a.closed
        await second.__aexit__(None, None, None)  # surplus and nobody waits: closed
        assert b.closed
        done.set()
        await task


async def test_idle_resources_are_reaped_down_to_min_size(factory: Factory) -> None:
    async with make_pool(factory, min_size=1, max_size=4, idle_timeout=0.1) as pool:
        await _lease_all(pool, 4)
        assert len(factory.open_things()) == 4
        await eventually(lambda: len(factory.open_things()) == 1)
        assert pool.closed_by_reason["idle"] == 3
        await asyncio.sleep(0.3)
        assert len(factory.open_things()) == 1


async def test_resources_past_max_lifetime_are_replaced(factory: Factory) -> None:
    async with make_pool(factory, min_size=2, max_lifetime=0.2) as pool:
        originals = list(factory.made)
        await eventually(lambda: all(t.closed for t in originals))
        await eventually(lambda: len(factory.open_things()) == 2)
        assert pool.closed_by_reason["lifetime"] >= 2
        async with pool.get_connection() as thing:
            assert thing not in originals


async def test_an_expired_resource_in_use_is_closed_when_returned(factory: Factory) -> None:
    async with make_pool(factory, min_size=0, max_lifetime=0.1, maintenance_interval=60) as pool:
        async with pool.get_connection() as thing:
            await asyncio.sleep(0.15)
        assert thing.closed and pool.closed_by_reason["lifetime"] == 1


async def test_lifetimes_are_jittered(factory: Factory) -> None:
    async with make_pool(factory, min_size=5, max_size=5, max_lifetime=100.0) as pool:
        lifetimes = {round(e.expires - e.created, 6) for e in pool._stock.records}
        assert len(lifetimes) > 1
        assert all(95.0 <= span <= 100.0 for span in lifetimes)


@pytest.mark.parametrize(
    "timing",
    [{"validate_interval": 0.05}, {"health_check_interval": 0.05}],
    ids=["validate_interval", "defaults_to_health_check_interval"],
)
async def test_idle_resources_are_validated_in_the_background(
    factory: Factory, timing: dict[str, float]
) -> None:
    async with make_pool(factory, min_size=2, **timing) as pool:
        sick = factory.made[0]
        sick.valid = False
        await eventually(lambda: sick.closed)
        await eventually(lambda: len(factory.open_things()) == 2)
        assert pool.closed_by_reason["validation"] == 1


# --- drain, resize, close ---------------------------------------------------------------


async def test_drain_replaces_every_resource_idle_and_leased(factory: Factory) -> None:
    async with make_pool(factory, min_size=3) as pool:
        originals = list(factory.made)
        async with pool.get_connection() as leased:
            marked = await pool.drain(interval=0.0)
            assert marked == 3
            assert not leased.closed  # never pulled from under its holder
        assert all(t.closed for t in originals)
        async with pool.get_connection() as thing:
            assert thing not in originals
        assert pool.closed_by_reason["drained"] == 3


async def test_resize_opens_up_to_a_larger_min_and_closes_idle_above_a_smaller_max(
    factory: Factory,
) -> None:
    async with make_pool(factory, min_size=1, max_size=4) as pool:
        await pool.resize(min_size=3, max_size=5)
        await eventually(lambda: len(factory.open_things()) == 3)
        assert pool.get_stats_snapshot()["max_size"] == 5
        await pool.resize(min_size=1, max_size=2)
        await eventually(lambda: len(factory.open_things()) == 2)
        assert pool.closed_by_reason["resized"] == 1


async def test_close_closes_every_resource_and_stops_the_maintenance_task(
    factory: Factory,
) -> None:
    pool = make_pool(factory, min_size=2, idle_timeout=0.1)
    await pool.initialize()
    task = pool._stock.maintenance
    assert task is not None and not task.done()
    await pool.close()
    assert task.done()
    assert all(t.closed for t in factory.made)
    assert pool.get_stats_snapshot()["state"] == "closed"


async def test_close_closes_a_resource_held_by_an_abandoned_lease(factory: Factory) -> None:
    pool = make_pool(factory, min_size=1)
    await pool.initialize()
    lease = pool.get_connection()
    thing = await lease.__aenter__()
    await pool.close(drain_timeout=0.05)
    assert thing.closed and pool.leases_abandoned == 1
    await lease.__aexit__(None, None, None)  # a late return is harmless


async def test_a_hanging_close_is_bounded_by_close_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    factory = Factory()

    async def hang(_: Thing) -> None:
        await asyncio.sleep(3600)

    pool = ResourcePool(config(min_size=1), factory.create, hang, close_timeout=0.05)
    await pool.initialize()
    with caplog.at_level(logging.WARNING, logger="resync.pool"):
        await pool.close()
    assert "closing a resource failed: TimeoutError" in caplog.text
    assert pool.stats.connection_closures == 1


# --- health, manager, metrics -------------------------------------------------------------


async def test_health_check_validates_a_resource(
    pool: ResourcePool[Thing], factory: Factory
) -> None:
    assert await pool.health_check()
    assert pool.get_stats_snapshot()["last_health_check"] is not None


async def test_registered_with_the_manager_like_any_pool(factory: Factory) -> None:
    settings = Settings(_env_file=None, DB_POOL_MIN_SIZE=0)  # type: ignore[call-arg]
    pool = make_pool(factory, min_size=1, backend="workers")
    async with ConnectionPoolManager(settings, check_budget_on_start=False) as manager:
        await manager.register("workers", pool)
        assert pool.is_ready and manager.pool("workers") is pool
        assert await manager.health_check_all() == {"database": True, "workers": True}
        stats = manager.get_pool_stats()["workers"]
        assert stats["backend"] == "workers" and stats["details"]["open"] == 1
        text = generate_latest(build_registry(lambda: manager.pools)).decode()
        assert 'pool="workers"' in text and 'backend="workers"' in text
    assert pool.state.value == "closed" and all(t.closed for t in factory.made)


# --- chaos ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
async def test_random_failures_and_cancellations_never_lose_a_slot_or_a_resource(
    seed: int,
) -> None:
    rng = random.Random(seed)
    made: list[object] = []
    closed: list[object] = []

    async def create() -> object:
        await asyncio.sleep(rng.choice([0, 0, 0.001]))
        if rng.random() < 0.05:
            raise OSError("refused")
        made.append(thing := object())
        return thing

    async def close(thing: object) -> None:
        await asyncio.sleep(rng.choice([0, 0.001]))
        closed.append(thing)

    async def validate(_: object) -> bool:
        await asyncio.sleep(0)
        return rng.random() > 0.05

    def reset(_: object) -> None:
        if rng.random() < 0.03:
            raise RuntimeError("dirty")

    pool = ResourcePool(
        config(min_size=2, max_size=4, connection_timeout=0.05, idle_timeout=0.02),
        create,
        close,
        validate=validate,
        reset=reset,
        overflow=2,
        order=rng.choice(["fifo", "lifo"]),
        create_retry=RetryPolicy(max_attempts=5, initial_backoff=0.001, max_backoff=0.005),
    )
    await pool.initialize()

    async def worker() -> None:
        for _ in range(20):
            with contextlib.suppress(Exception):
                async with pool.get_connection():
                    await asyncio.sleep(rng.choice([0, 0.001, 0.002]))
                    if rng.random() < 0.05:
                        raise ResourceBroken("broke")

    tasks = [asyncio.create_task(worker()) for _ in range(12)]
    for _ in range(15):
        await asyncio.sleep(0.003)
        rng.choice(tasks).cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert pool.gate.in_use == 0 and pool.stats.active_connections == 0
    assert not pool._stock.leased and pool.size <= 6
    await pool.drain(interval=0.0)
    await pool.close()
    assert {id(t) for t in made} == {id(t) for t in closed}  # each made one closed ...
    assert len(closed) == len(made)  # ... exactly once
