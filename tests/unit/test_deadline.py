"""``resync.deadline()``: the contextvar's rules and what the lease path does with it (issue 17).

The pool is the in-memory one; the bounds are generous (the deadlines are
tens of milliseconds, the pool's own timeout is seconds), so a slow shared
machine cannot turn them into flakes.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

import resync
import resync.core
from resync.core.exceptions import (
    DATABASE_ERRORS,
    HTTP_ERRORS,
    REDIS_ERRORS,
    ConfigurationError,
    DatabaseDeadlineExceededError,
    DatabaseError,
    DeadlineExceededError,
    HTTPDeadlineExceededError,
    PoolTimeoutError,
    RedisDeadlineExceededError,
    TWSConnectionError,
)
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.kernel.deadlines import SLACK
from resync.testing import InMemoryConnection, InMemoryPool

# --- the contextvar ------------------------------------------------------------------


def test_exported_from_resync_and_resync_core() -> None:
    assert resync.deadline is resync.core.deadline
    assert resync.current_deadline is resync.core.current_deadline
    assert resync.current_deadline() is None
    assert resync.time_left() is None


def test_a_deadline_is_in_force_inside_the_block_only() -> None:
    with resync.deadline(10) as current:
        assert current is not None
        assert resync.current_deadline() is current
        left = resync.time_left()
        assert left is not None and 9 < left <= 10
        assert current.seconds == 10
        assert not current.expired
    assert resync.current_deadline() is None


def test_nested_deadlines_take_the_earlier() -> None:
    with resync.deadline(1) as outer:
        with resync.deadline(5) as looser:
            assert looser is outer  # a later deadline cannot extend the caller's
        with resync.deadline(0.5) as tighter:
            assert tighter is not outer
            assert tighter is not None and outer is not None
            assert tighter.expires_at < outer.expires_at
            assert resync.current_deadline() is tighter
        assert resync.current_deadline() is outer  # leaving restores the outer one
    assert resync.current_deadline() is None


def test_none_and_infinity_set_no_new_deadline() -> None:
    with resync.deadline(None) as nothing:
        assert nothing is None
    with resync.deadline(2) as outer, resync.deadline(math.inf) as same:
        assert same is outer
    with resync.deadline(math.inf) as unbounded:
        assert unbounded is None


@pytest.mark.parametrize("bad", [-1, float("nan"), "1", True])
def test_a_bad_number_of_seconds_is_a_configuration_error(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"resync\.deadline\(\) takes a number"):
        resync.deadline(bad)


def test_zero_seconds_is_already_expired() -> None:
    with resync.deadline(0) as current:
        assert current is not None and current.expired
        assert "set by resync.deadline()" in current.describe()


def test_an_entered_deadline_cannot_be_entered_again() -> None:
    block = resync.deadline(1)
    with block, pytest.raises(RuntimeError, match="already entered"), block:
        pass
    with block:  # once left, it can be entered again, with a fresh clock
        assert resync.current_deadline() is not None


async def test_tasks_inherit_the_deadline_and_async_with_works() -> None:
    async def seen() -> resync.Deadline | None:
        await asyncio.sleep(0)
        return resync.current_deadline()

    async with resync.deadline(3) as current:
        child = await asyncio.create_task(seen())
        gathered = list(await asyncio.gather(seen(), seen()))
    assert child is current
    assert gathered == [current, current]
    assert await asyncio.create_task(seen()) is None  # created after the block


async def test_a_task_tightening_its_deadline_leaves_the_parent_alone() -> None:
    with resync.deadline(3) as parent:

        async def child() -> None:
            with resync.deadline(0.1) as mine:
                assert resync.current_deadline() is mine

        await asyncio.create_task(child())
        assert resync.current_deadline() is parent


def test_every_family_has_its_deadline_error() -> None:
    assert DATABASE_ERRORS.deadline is DatabaseDeadlineExceededError
    assert REDIS_ERRORS.deadline is RedisDeadlineExceededError
    assert HTTP_ERRORS.deadline is HTTPDeadlineExceededError
    assert issubclass(DatabaseDeadlineExceededError, DatabaseError)
    assert issubclass(RedisDeadlineExceededError, DatabaseError)
    assert issubclass(HTTPDeadlineExceededError, TWSConnectionError)
    family: tuple[type[DeadlineExceededError], ...] = (
        DatabaseDeadlineExceededError,
        RedisDeadlineExceededError,
        HTTPDeadlineExceededError,
    )
    for cls in family:
        assert issubclass(cls, DeadlineExceededError)
        assert issubclass(cls, TimeoutError)
        # The pool was not too small: not the pool's timeout error.
        assert not issubclass(cls, PoolTimeoutError)


# --- the lease path ----------------------------------------------------------------------


def make_pool(**overrides: Any) -> InMemoryPool:
    values: dict[str, Any] = {
        "pool_name": "mem",
        "min_size": 1,
        "max_size": 1,
        "connection_timeout": 5.0,
    }
    connect_delay = overrides.pop("connect_delay", 0.0)
    values.update(overrides)
    return InMemoryPool(ConnectionPoolConfig(**values), connect_delay=connect_delay)


async def test_a_lease_after_the_deadline_fails_at_once_naming_the_pool_and_the_deadline() -> None:
    pool = make_pool()
    await pool.initialize()
    try:
        with resync.deadline(0.01):
            await asyncio.sleep(0.02)
            started = time.monotonic()
            with pytest.raises(DeadlineExceededError) as caught:
                async with pool.get_connection():
                    pytest.fail("a lease after the deadline must not be granted")
            assert time.monotonic() - started < 0.5  # at once, not after connection_timeout
        message = str(caught.value)
        assert "pool 'mem'" in message
        assert "deadline" in message and "not the pool" in message
        assert "before the lease" in message
        assert caught.value.pool_name == "mem"
        stats = pool.get_stats_snapshot()
        assert stats["deadline_exceeded"] == 1
        assert stats["pool_exhaustions"] == 0
        assert stats["pool_hits"] == 0
        async with pool.get_connection():  # outside the block: unchanged
            pass
    finally:
        await pool.close()


async def test_the_wait_for_a_slot_is_capped_by_the_deadline() -> None:
    pool = make_pool()
    await pool.initialize()
    holder_in = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with pool.get_connection():
            holder_in.set()
            await release.wait()

    task = asyncio.create_task(holder())
    try:
        await holder_in.wait()
        started = time.monotonic()
        with resync.deadline(0.05), pytest.raises(DeadlineExceededError) as caught:
            async with pool.get_connection():
                pass
        elapsed = time.monotonic() - started
        assert 0.05 - SLACK <= elapsed < 1.0  # the deadline, not connection_timeout (5 s)
        assert "while waiting for a connection" in str(caught.value)
        stats = pool.get_stats_snapshot()
        assert stats["deadline_exceeded"] == 1 and stats["pool_exhaustions"] == 0
        assert stats["waiting_connections"] == 0
    finally:
        release.set()
        await task
        await pool.close()
    assert pool.gate.in_use == 0


async def test_without_a_deadline_the_pool_timeout_is_unchanged() -> None:
    pool = make_pool(connection_timeout=0.05)
    await pool.initialize()
    try:
        async with pool.get_connection():
            with pytest.raises(PoolTimeoutError) as caught:
                async with pool.get_connection():
                    pass
            assert not isinstance(caught.value, DeadlineExceededError)
            # A deadline later than connection_timeout leaves the pool's own error too.
            with resync.deadline(30), pytest.raises(PoolTimeoutError) as again:
                async with pool.get_connection():
                    pass
            assert not isinstance(again.value, DeadlineExceededError)
        assert pool.stats.pool_exhaustions == 2 and pool.stats.deadline_exceeded == 0
    finally:
        await pool.close()


async def test_a_connect_cut_short_by_the_deadline_is_a_deadline_error() -> None:
    pool = make_pool(min_size=0, connect_delay=2.0)
    await pool.initialize()
    try:
        started = time.monotonic()
        with resync.deadline(0.05), pytest.raises(DeadlineExceededError) as caught:
            async with pool.get_connection():
                pass
        assert time.monotonic() - started < 1.0
        assert "while connecting" in str(caught.value)
        assert isinstance(caught.value.__cause__, TimeoutError)
        assert pool.stats.pool_exhaustions == 0 and pool.stats.deadline_exceeded == 1
        assert pool.gate.in_use == 0
    finally:
        await pool.close()


class AbortingPool(InMemoryPool):
    """A backend whose abort cuts the leased connection off at the deadline."""

    def __init__(self, config: ConnectionPoolConfig) -> None:
        super().__init__(config)
        self.aborted: list[InMemoryConnection] = []
        self.released_with: list[BaseException | None] = []

    def _bind_deadline(self, connection: Any, deadline: resync.Deadline) -> Any:
        def abort() -> None:
            connection.broken = True
            self.aborted.append(connection)

        return abort

    async def _release_connection(
        self, connection: InMemoryConnection, error: BaseException | None
    ) -> None:
        self.released_with.append(error)
        await super()._release_connection(connection, error)


def aborting_pool() -> AbortingPool:
    config = ConnectionPoolConfig(pool_name="cut", min_size=1, max_size=1, connection_timeout=5)
    return AbortingPool(config)


async def test_a_connection_cut_off_at_the_deadline_ends_the_lease_with_its_error() -> None:
    pool = aborting_pool()
    await pool.initialize()
    try:
        with resync.deadline(0.03), pytest.raises(DeadlineExceededError) as caught:
            async with pool.get_connection() as conn:
                await asyncio.sleep(0.1)  # past the deadline, then a clean exit
        assert pool.aborted == [conn]
        assert "during the lease" in str(caught.value)
        (told,) = pool.released_with
        assert isinstance(told, DeadlineExceededError)  # so the backend discards it
        assert conn.closed
        assert pool.stats.deadline_exceeded == 1
        async with pool.get_connection() as fresh:
            assert fresh is not conn
    finally:
        await pool.close()


async def test_the_driver_error_of_the_cut_becomes_the_deadline_error() -> None:
    pool = aborting_pool()
    await pool.initialize()
    try:
        with resync.deadline(0.03), pytest.raises(DeadlineExceededError) as caught:
            async with pool.get_connection():
                await asyncio.sleep(0.1)
                raise TimeoutError("the statement was cut off")
        assert isinstance(caught.value.__cause__, TimeoutError)
    finally:
        await pool.close()


async def test_the_bodys_own_error_after_the_cut_propagates_unchanged() -> None:
    pool = aborting_pool()
    await pool.initialize()
    try:
        with resync.deadline(0.03), pytest.raises(KeyError, match="mine"):
            async with pool.get_connection():
                await asyncio.sleep(0.1)
                raise KeyError("mine")
        (told,) = pool.released_with  # the connection is discarded all the same
        assert isinstance(told, DeadlineExceededError)
    finally:
        await pool.close()


async def test_a_lease_that_ends_in_time_cancels_the_abort() -> None:
    pool = aborting_pool()
    await pool.initialize()
    try:
        with resync.deadline(0.05):
            async with pool.get_connection() as conn:
                pass
            await asyncio.sleep(0.1)  # past the deadline: nothing may fire now
        assert pool.aborted == []
        assert pool.released_with == [None]
        assert not conn.closed and pool.stats.deadline_exceeded == 0
    finally:
        await pool.close()


async def test_without_a_deadline_the_backend_is_not_asked_to_bind_one() -> None:
    pool = aborting_pool()
    calls: list[object] = []
    bind = pool._bind_deadline

    def counting(connection: Any, deadline: resync.Deadline) -> Any:
        calls.append(connection)
        return bind(connection, deadline)

    pool._bind_deadline = counting  # type: ignore[method-assign]
    await pool.initialize()
    try:
        async with pool.get_connection():
            pass
        assert calls == [] and pool.released_with == [None]
        with resync.deadline(5):
            async with pool.get_connection() as conn:
                pass
        assert calls == [conn]
    finally:
        await pool.close()


async def test_a_cancelled_lease_stays_cancelled() -> None:
    pool = aborting_pool()
    await pool.initialize()
    try:
        entered = asyncio.Event()

        async def body() -> None:
            with resync.deadline(0.03):
                async with pool.get_connection():
                    entered.set()
                    await asyncio.sleep(10)

        task = asyncio.create_task(body())
        await entered.wait()
        await asyncio.sleep(0.06)  # the abort fired; the body is still asleep
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(pool.aborted) == 1
        assert pool.gate.in_use == 0
    finally:
        await pool.close()
