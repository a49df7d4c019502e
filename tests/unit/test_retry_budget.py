"""The retry budget's rules (Finagle's RetryBudget), on a clock the test moves."""

from __future__ import annotations

import pytest

from resync.core import retry_budget
from resync.core.retry_budget import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(retry_budget, "monotonic", fake)
    return fake


def spend(budget: RetryBudget) -> int:
    """Withdraw until refused; how many retries were allowed."""
    taken = 0
    while budget.withdraw():
        taken += 1
    return taken


def test_retries_are_a_percent_of_the_requests(clock: Clock) -> None:
    budget = RetryBudget(percent=20, min_per_second=0)
    assert not budget.can_retry() and spend(budget) == 0  # no requests: no retries
    for _ in range(100):
        budget.deposit()
    assert budget.balance == pytest.approx(20)
    assert spend(budget) == 20
    assert not budget.can_retry()
    for _ in range(5):
        budget.deposit()
    assert spend(budget) == 1  # every 5 requests earn one retry


def test_the_floor_is_a_reserve_of_min_per_second_over_the_window(clock: Clock) -> None:
    budget = RetryBudget(percent=20, min_per_second=10, window=10)
    assert spend(budget) == 100  # 10/s x 10 s, with no request at all
    for _ in range(50):
        budget.deposit()
    assert spend(budget) == 10  # then 20 % of the requests


def test_deposits_and_withdrawals_leave_the_window(clock: Clock) -> None:
    budget = RetryBudget(percent=20, min_per_second=1, window=10)
    assert spend(budget) == 10
    clock.now += 5
    assert spend(budget) == 0  # the withdrawals are still in the window
    clock.now += 5.5
    assert spend(budget) == 10  # ...and out of it 10 s later: the reserve is whole again
    for _ in range(100):
        budget.deposit()
    clock.now += 11
    assert spend(budget) == 10  # old deposits expire too


def test_can_retry_takes_nothing(clock: Clock) -> None:
    budget = RetryBudget(percent=0, min_per_second=0.1, window=10)
    assert budget.can_retry() and budget.can_retry()
    assert budget.withdraw()
    assert not budget.can_retry() and not budget.withdraw()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"percent": -1}, "percent"),
        ({"min_per_second": float("nan")}, "min_per_second"),
        ({"percent": float("inf")}, "percent"),
        ({"window": 0.5}, "window"),
        ({"min_per_second": 1e308}, "min_per_second"),  # overflowed the reserve (CI's fuzz)
        ({"percent": 1e300}, "percent"),
    ],
)
def test_bad_values_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetryBudget(**kwargs)


def test_repr_says_the_rule_and_what_is_left(clock: Clock) -> None:
    assert repr(RetryBudget()) == "RetryBudget(20% + 10/s over 10s; 100.0 retries left)"
