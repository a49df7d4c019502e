"""The kernel's lease-observer hook: who is told, with what, and what a failing observer costs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from resync.core.exceptions import PoolOverloadedError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.kernel import observe
from resync.testing import InMemoryPool
from resync.testing.memory_pool import InMemoryConnection


@dataclass
class Ended:
    pool_name: str
    backend: str
    started: float
    waited: float
    held: float
    error: BaseException | None


@dataclass
class Recorder:
    seen: list[Ended] = field(default_factory=list)

    def lease_ended(
        self,
        pool_name: str,
        backend: str,
        started: float,
        waited: float,
        held: float,
        error: BaseException | None,
    ) -> None:
        self.seen.append(Ended(pool_name, backend, started, waited, held, error))


class Broken:
    def lease_ended(self, *args: object) -> None:
        raise ValueError("observer bug")


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    observe.add_observer(rec)
    try:
        yield rec
    finally:
        observe.remove_observer(rec)


@pytest.fixture
async def pool() -> AsyncIterator[InMemoryPool]:
    mem = InMemoryPool(ConnectionPoolConfig(pool_name="obs", min_size=1, max_size=1, max_waiting=1))
    await mem.initialize()
    try:
        yield mem
    finally:
        await mem.close()


def test_add_and_remove_replace_the_tuple() -> None:
    first, second = Recorder(), Recorder()
    before = observe.observers
    observe.add_observer(first)
    try:
        with_first = observe.observers
        assert with_first is not before and with_first == (first,)
        observe.add_observer(first)
        assert observe.observers is with_first  # once only
        observe.add_observer(second)
        assert observe.observers == (first, second) and with_first == (first,)
        observe.remove_observer(first)
        assert observe.observers == (second,)
    finally:
        observe.remove_observer(first)
        observe.remove_observer(second)
    assert observe.observers == ()
    observe.remove_observer(first)  # not registered: no-op


async def test_a_granted_lease_is_reported_once_after_its_release(
    recorder: Recorder, pool: InMemoryPool
) -> None:
    async with pool.get_connection():
        await asyncio.sleep(0.02)
        assert recorder.seen == []
    (ended,) = recorder.seen
    assert (ended.pool_name, ended.backend, ended.error) == ("obs", "memory", None)
    assert ended.waited >= 0 and ended.held >= 0.015
    with pytest.raises(KeyError):
        async with pool.get_connection():
            raise KeyError("body")
    assert isinstance(recorder.seen[1].error, KeyError)
    assert pool.stats.active_connections == 0


async def test_a_refused_lease_is_reported_with_no_hold(
    recorder: Recorder, pool: InMemoryPool
) -> None:
    async with pool.get_connection():
        waiter = asyncio.create_task(pool.get_connection().__aenter__())
        await asyncio.sleep(0.01)  # queued: the one place max_waiting allows
        with pytest.raises(PoolOverloadedError):
            async with pool.get_connection():
                pass
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    overloaded, cancelled, held = recorder.seen
    assert isinstance(overloaded.error, PoolOverloadedError) and overloaded.held == 0
    assert isinstance(cancelled.error, asyncio.CancelledError) and cancelled.held == 0
    assert cancelled.waited >= 0.005
    assert held.error is None and held.held > 0


async def test_a_failing_release_is_reported_with_its_error(recorder: Recorder) -> None:
    class FailingRelease(InMemoryPool):
        async def _release_connection(
            self, connection: InMemoryConnection, error: BaseException | None
        ) -> None:
            self._discard(connection)
            raise ConnectionResetError("lost on release")

    pool = FailingRelease(ConnectionPoolConfig(pool_name="rel", min_size=0, max_size=1))
    await pool.initialize()
    try:
        with pytest.raises(ConnectionResetError):
            async with pool.get_connection():
                pass
    finally:
        await pool.close()
    (ended,) = recorder.seen
    assert isinstance(ended.error, ConnectionResetError) and ended.held >= 0
    assert pool.stats.active_connections == 0


async def test_an_observer_that_raises_is_logged_and_ignored(
    recorder: Recorder, pool: InMemoryPool, caplog: pytest.LogCaptureFixture
) -> None:
    broken = Broken()
    observe.add_observer(broken)
    try:
        async with pool.get_connection() as conn:
            assert not conn.closed
    finally:
        observe.remove_observer(broken)
    assert len(recorder.seen) == 1  # the other observer still saw the lease
    assert "lease observer" in caplog.text and "ValueError" in caplog.text
    assert pool.stats.active_connections == 0
