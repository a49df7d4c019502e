"""Overload control of the admission gate on a virtual clock (looptime): exact times.

Queue management (CoDel: entering and leaving the dropping state), priorities
(who is refused first; the queue stays FIFO), and that with everything off the
gate behaves as before. Every time below is the loop's virtual time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resync.core.exceptions import InvalidPriorityError, PoolConfigError, PoolOverloadedError
from resync.core.pools import ConnectionPoolConfig, Priority
from resync.core.pools.kernel.admission import AdmissionGate, priority_bound
from resync.testing.memory_pool import InMemoryPool
from tests.helpers.virtual_time import run_virtual

TARGET = 0.05
INTERVAL = 1.0


def _pool(**overrides: Any) -> InMemoryPool:
    values: dict[str, Any] = {
        "pool_name": "ov",
        "min_size": 0,
        "max_size": 1,
        "connection_timeout": 30.0,
        "health_check_interval": 0,
        "queue_target": TARGET,
        "queue_interval": INTERVAL,
    }
    values.update(overrides)
    return InMemoryPool(ConnectionPoolConfig(**values))


class Calls:
    """Starts leases at chosen virtual times and records how each ended, and when."""

    def __init__(self, pool: InMemoryPool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.ended: dict[str, tuple[str, float]] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, at: float, hold: float = 0.0, priority: str = "default") -> None:
        self.tasks.append(asyncio.create_task(self._run(name, at, hold, priority)))

    async def _run(self, name: str, at: float, hold: float, priority: str) -> None:
        await asyncio.sleep(at - self.loop.time())
        try:
            async with self.pool.get_connection(priority=priority):  # type: ignore[arg-type]
                self.ended[name] = ("granted", self.loop.time())
                await asyncio.sleep(hold)
        except PoolOverloadedError as exc:
            kind = "dropped" if "dropped from the queue" in str(exc) else "refused"
            self.ended[name] = (kind, self.loop.time())

    async def finish(self) -> None:
        await asyncio.gather(*self.tasks)


def test_codel_enters_dropping_after_a_whole_interval_without_a_grant_within_target() -> None:
    async def main() -> dict[str, Any]:
        pool = _pool()
        await pool.initialize()
        calls = Calls(pool)
        calls.start("holder", 0.0, hold=2.0)
        calls.start("w1", 0.001)  # queues; opens the first interval (ends at 1.001)
        calls.start("w2", 0.5)
        calls.start("w3", 1.01)  # interval over, nobody granted: dropping
        calls.start("w4", 1.02)  # would wait behind w3 with no slot handed over: refused
        calls.start("vip", 1.03, priority="critical")  # critical newcomers still queue
        await asyncio.sleep(1.5)
        seen = {"dropping": pool.gate.dropping, "snapshot": pool.get_stats_snapshot()}
        await calls.finish()
        await pool.close()
        return {**seen, "ended": calls.ended, "stats": pool.stats}

    out = run_virtual(main)
    ended = out["ended"]
    assert out["dropping"] is True
    # Waiters older than 2 x target failed at once when the interval was judged (t=1.01).
    assert ended["w1"] == ("dropped", 1.01)
    assert ended["w2"] == ("dropped", 1.01)
    # A default newcomer the queue cannot serve within 1.5 x target learns it at once.
    assert ended["w4"] == ("refused", 1.02)
    # At t=2.0 the slot is handed over: w3 has waited 0.99 s (> 2 x target) and is
    # skipped; the critical caller behind it (never dropped) gets the slot.
    assert ended["w3"] == ("dropped", 2.0)
    assert ended["vip"] == ("granted", 2.0)
    admission = out["snapshot"]["admission"]
    assert admission["dropping"] is True
    assert admission["queue_drops"] == 2
    assert admission["refused"] == {"critical": 0, "default": 1, "sheddable": 0}
    assert out["stats"].pool_overloads == 4  # w1, w2, w4 and w3


def test_codel_leaves_dropping_once_a_caller_is_granted_within_target() -> None:
    # Intervals open at the first queue event after the previous one ended:
    # [0.001, 1.001) slow, [1.1, 2.1) slow, [2.31, 3.31) has a grant within target.
    async def main() -> tuple[list[tuple[float, bool]], dict[str, tuple[str, float]]]:
        pool = _pool()
        await pool.initialize()
        gate = pool.gate
        loop = asyncio.get_running_loop()
        calls = Calls(pool)
        calls.start("holder", 0.0, hold=1.2)
        calls.start("w1", 0.001)  # opens the first interval
        calls.start("w2", 1.1)  # judges it: dropping; w1 (1.099 s) dropped, w2 queues
        # 1.2: w2 granted after 0.1 s (not over 2 x target; not within target either).
        calls.start("w3", 1.21, hold=0.2)  # a free slot: the fast path
        calls.start("w4", 1.22)  # queues; at 1.41 it has waited 0.19 s: dropped
        calls.start("w5", 2.3, hold=0.02)  # free slot
        calls.start("w6", 2.31)  # judges [1.1, 2.1): still slow; granted at 2.32 (0.01 s)
        calls.start("w7", 3.3, hold=0.5)  # free slot
        calls.start("w8", 3.35, priority="sheddable")  # judges [2.31, 3.31): recovered
        seen: list[tuple[float, bool]] = []
        for at in (1.15, 3.0, 3.34, 3.36):
            await asyncio.sleep(at - loop.time())
            seen.append((at, gate.dropping))
        await calls.finish()
        await pool.close()
        return seen, calls.ended

    seen, ended = run_virtual(main)
    assert seen == [(1.15, True), (3.0, True), (3.34, True), (3.36, False)]
    assert ended["w1"] == ("dropped", 1.1)
    outcomes = {name: (kind, round(at, 6)) for name, (kind, at) in ended.items()}
    assert outcomes["w2"] == ("granted", 1.2)
    assert outcomes["w4"] == ("dropped", 1.41)
    assert outcomes["w6"] == ("granted", 2.32)
    # Not dropping any more: a sheddable caller queues and is served in turn.
    assert outcomes["w8"] == ("granted", 3.8)


def test_admitted_callers_stay_fifo_whatever_their_priority() -> None:
    async def main() -> tuple[list[str], dict[str, tuple[str, float]]]:
        pool = _pool(queue_target=None, queue_interval=None, max_waiting=4)
        await pool.initialize()
        order: list[str] = []
        loop = asyncio.get_running_loop()
        ended: dict[str, tuple[str, float]] = {}

        async def lease(name: str, at: float, priority: str) -> None:
            await asyncio.sleep(at)
            try:
                async with pool.get_connection(priority=priority):  # type: ignore[arg-type]
                    order.append(name)
                    ended[name] = ("granted", loop.time())
                    await asyncio.sleep(0.1)
            except PoolOverloadedError:
                ended[name] = ("refused", loop.time())

        plan = [
            ("holder", 0.0, "default"),
            ("s1", 0.01, "sheddable"),  # waiting 0 < bound 2
            ("d1", 0.02, "default"),  # waiting 1 < 4
            ("s2", 0.03, "sheddable"),  # waiting 2 >= 2: refused
            ("c1", 0.04, "critical"),  # waiting 2 < 5
            ("d2", 0.05, "default"),  # waiting 3 < 4
            ("d3", 0.06, "default"),  # waiting 4 >= 4: refused
            ("c2", 0.07, "critical"),  # waiting 4 < 5: queues past max_waiting
            ("c3", 0.08, "critical"),  # waiting 5 >= 5: refused
        ]
        await asyncio.gather(*(lease(*step) for step in plan))
        await pool.close()
        return order, ended

    order, ended = run_virtual(main)
    assert order == ["holder", "s1", "d1", "c1", "d2", "c2"]
    assert ended["s2"] == ("refused", 0.03)
    assert ended["d3"] == ("refused", 0.06)
    assert ended["c3"] == ("refused", 0.08)
    assert [ended[n][1] for n in order] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])


def test_priority_bounds_are_the_documented_rule() -> None:
    assert [priority_bound(0, p) for p in Priority] == [0, 0, 0]
    assert priority_bound(10, Priority.SHEDDABLE) == 5
    assert priority_bound(10, Priority.DEFAULT) == 10
    assert priority_bound(10, Priority.CRITICAL) == 12
    assert priority_bound(1, Priority.SHEDDABLE) == 0
    assert priority_bound(1, Priority.CRITICAL) == 2


def test_with_max_waiting_1_a_sheddable_caller_never_queues() -> None:
    async def main() -> dict[str, tuple[str, float]]:
        pool = _pool(queue_target=None, queue_interval=None, max_waiting=1)
        await pool.initialize()
        calls = Calls(pool)
        calls.start("holder", 0.0, hold=1.0)
        calls.start("shed", 0.1, priority="sheddable")
        calls.start("default", 0.2)
        await calls.finish()
        await pool.close()
        return calls.ended

    ended = run_virtual(main)
    assert ended["shed"] == ("refused", 0.1)
    assert ended["default"] == ("granted", 1.0)


def test_sheddable_callers_are_refused_first_while_dropping() -> None:
    async def main() -> dict[str, tuple[str, float]]:
        pool = _pool()
        await pool.initialize()
        calls = Calls(pool)
        calls.start("holder", 0.0, hold=1.5)
        calls.start("w1", 0.001)
        calls.start("w2", 1.01)  # dropping from here; queue empty, so w2 queues
        calls.start("shed", 1.02, priority="sheddable")  # refused even with room
        calls.start("vip", 1.03, priority="critical")
        await calls.finish()
        await pool.close()
        return calls.ended

    ended = run_virtual(main)
    assert ended["w1"] == ("dropped", 1.01)
    assert ended["shed"] == ("refused", 1.02)
    # At 1.5: w2 waited 0.49 s > 2 x target: dropped; the critical one is served.
    assert ended["w2"] == ("dropped", 1.5)
    assert ended["vip"] == ("granted", 1.5)


def test_a_bad_priority_is_a_typed_error_naming_the_pool() -> None:
    pool = _pool()
    for bad in ("urgent", 1, None):
        with pytest.raises(InvalidPriorityError, match="Pool 'ov': priority must be") as info:
            pool.get_connection(priority=bad)  # type: ignore[arg-type]
        assert isinstance(info.value, ValueError)
        assert info.value.pool_name == "ov"
    assert pool.get_connection(priority=Priority.SHEDDABLE) is not None


def test_with_everything_off_waiters_are_never_dropped_and_stay_fifo() -> None:
    async def main() -> tuple[list[str], dict[str, Any], str]:
        pool = _pool(queue_target=None, queue_interval=None, max_waiting=3)
        await pool.initialize()
        assert pool.gate.managed is False
        order: list[str] = []

        async def lease(name: str, at: float, hold: float) -> None:
            await asyncio.sleep(at)
            async with pool.get_connection():
                order.append(name)
                await asyncio.sleep(hold)

        tasks = [asyncio.create_task(lease("holder", 0, 10.0))]
        tasks += [asyncio.create_task(lease(f"w{i}", 0.01 * i, 1.0)) for i in range(1, 4)]
        await asyncio.sleep(0.5)
        with pytest.raises(PoolOverloadedError) as info:
            async with pool.get_connection():
                pass
        await asyncio.gather(*tasks)  # each waited up to 12 s: nobody is dropped
        snapshot = pool.get_stats_snapshot()["admission"]
        await pool.close()
        return order, snapshot, str(info.value)

    order, snapshot, message = run_virtual(main)
    assert order == ["holder", "w1", "w2", "w3"]
    assert message == (
        "Pool 'ov' overloaded: 3 callers already waiting (max_waiting=3); "
        "retry later or raise max_waiting/max_size"
    )
    assert snapshot == {
        "queue_target": 0.0,
        "queue_interval": 0.0,
        "dropping": False,
        "queue_drops": 0,
        "refused": {"critical": 0, "default": 1, "sheddable": 0},
        "adaptive": None,
    }


def test_a_gate_without_queue_management_never_reads_a_clock() -> None:
    gate = AdmissionGate(2)
    assert gate.try_acquire() and gate.try_acquire() and not gate.try_acquire()
    assert gate.refusal() is None  # unbounded, unmanaged: queue
    gate.release()
    gate.release()
    assert gate.in_use == 0 and gate._clock is None


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"queue_target": 0.05}, "must be set together"),
        ({"queue_interval": 1.0}, "must be set together"),
        ({"queue_target": -0.1, "queue_interval": 1.0}, "queue_target must be >= 0"),
        ({"queue_target": 2.0, "queue_interval": 1.0}, "must be shorter than queue_interval"),
        ({"queue_target": float("nan"), "queue_interval": 1.0}, "finite number"),
        ({"queue_target": "50ms", "queue_interval": 1.0}, "finite number"),
        ({"adaptive_limit": "yes"}, "adaptive_limit must be true or false"),
    ],
)
def test_overload_settings_are_validated(changes: dict[str, Any], rule: str) -> None:
    with pytest.raises(PoolConfigError, match=rule) as info:
        ConnectionPoolConfig(pool_name="cfg", **changes)
    assert "pool 'cfg'" in str(info.value)


def test_zero_or_none_leaves_queue_management_off() -> None:
    for off in (0, 0.0, None):
        config = ConnectionPoolConfig(queue_target=off, queue_interval=off)
        assert InMemoryPool(config).gate.managed is False
    assert InMemoryPool(ConnectionPoolConfig(queue_target=0.05, queue_interval=1)).gate.managed


def test_a_few_fast_grants_after_a_burst_of_drops_do_not_end_the_dropping_state() -> None:
    # Gate level, so the newcomer rule stays out of the way: each interval is
    # judged by the share of its grants within the target (at least half to leave).
    async def main() -> dict[str, Any]:
        gate = AdmissionGate(1, queue_target=TARGET, queue_interval=INTERVAL)
        loop = asyncio.get_running_loop()
        ended: dict[str, tuple[str, float]] = {}
        seen: dict[float, bool] = {}

        async def waiter(name: str, at: float) -> None:
            await asyncio.sleep(at - loop.time())
            outcome = await gate.wait(30.0)
            ended[name] = (outcome.value, round(loop.time(), 6))

        async def release(at: float) -> None:
            await asyncio.sleep(at - loop.time())
            gate.release()

        async def acquire(at: float) -> None:
            await asyncio.sleep(at - loop.time())
            assert gate.try_acquire()

        async def look(at: float) -> None:
            await asyncio.sleep(at - loop.time())
            seen[at] = gate.dropping

        assert gate.try_acquire()
        steps = [
            waiter("a", 0.001),  # opens [0.001, 1.001)
            waiter("b", 1.03),  # judges it: dropping; a (1.029 s) dropped
            release(1.1),  # b granted after 0.07 s: slow
            waiter("c", 1.15),
            waiter("d", 1.16),
            waiter("e", 1.17),
            release(1.18),  # c after 0.03 s: within target
            release(1.25),  # d after 0.09 s: slow
            release(1.32),  # e after 0.15 s: dropped; the slot is free
            look(1.5),
            acquire(2.19),
            waiter("f", 2.2),  # judges [1.03, 2.2): 1 of 3 grants fast -> still dropping
            look(2.201),
            waiter("g", 2.21),
            release(2.23),  # f after 0.03 s
            release(2.25),  # g after 0.04 s
            waiter("h", 3.3),  # judges [2.2, 3.3): 2 of 2 fast -> recovered
            look(3.301),
            release(3.4),
            release(3.5),
        ]
        await asyncio.gather(*steps)
        return {"ended": ended, "seen": seen, "dropped": gate.dropped, "in_use": gate.in_use}

    out = run_virtual(main)
    assert out["seen"] == {1.5: True, 2.201: True, 3.301: False}
    assert out["ended"] == {
        "a": ("dropped", 1.03),
        "b": ("granted", 1.1),
        "c": ("granted", 1.18),
        "d": ("granted", 1.25),
        "e": ("dropped", 1.32),
        "f": ("granted", 2.23),
        "g": ("granted", 2.25),
        "h": ("granted", 3.4),
    }
    assert out["dropped"] == 2 and out["in_use"] == 0
