"""A retry budget (Finagle's ``RetryBudget``): retries limited to a share of recent requests.

A retry policy alone multiplies a failure: when the upstream fails every
request, each caller sends ``max_attempts`` of them, and the upstream that was
failing under load gets ``max_attempts`` times the load. A budget caps the
retries of the whole pool instead: over the last ``window`` seconds (10), at
most ``percent`` (20 %) of the requests plus a reserve of
``min_per_second x window`` (10 x 10 = 100) may be retries, so a failing
upstream sees at most 1.2 x its normal load plus that floor (which lets a
pool with few requests still retry a blip).

As Finagle's ``TokenRetryBudget``: each request deposits ``percent / 100``
of a token, each retry withdraws one whole token, and the balance is the sum
over the window plus the reserve; a retry is allowed while the balance holds
a whole token. The window is kept in one-second buckets (a ring of
``window`` of them), so deposits and withdrawals are O(1) and the memory is
fixed. No lock: asyncio runs one callback at a time and nothing here awaits.
"""

from __future__ import annotations

import math
from time import monotonic

from resync.core.exceptions import ConfigurationError

__all__ = ["RetryBudget"]

# Tokens are kept in thousandths, so deposits of a fraction stay exact integers.
_SCALE = 1000


#: The largest percent or rate a budget takes (beyond it the integer arithmetic overflows).
_MAX_RATE = 1_000_000.0


class RetryBudget:
    """Retries allowed: ``percent`` % of the requests of the last ``window``
    seconds, plus ``min_per_second x window`` (see the module docstring).

    ``percent`` 0 and ``min_per_second`` 0 allow no retry at all. Raises
    :class:`~resync.core.exceptions.ConfigurationError` (a ``ValueError``)
    for a negative, NaN or infinite value, or a ``window`` under 1 s.
    """

    __slots__ = (
        "_buckets",
        "_deposit",
        "_reserve",
        "_stamps",
        "min_per_second",
        "percent",
        "window",
    )

    def __init__(
        self, percent: float = 20.0, min_per_second: float = 10.0, window: float = 10.0
    ) -> None:
        for name, value in (("percent", percent), ("min_per_second", min_per_second)):
            if not math.isfinite(value) or not 0 <= value <= _MAX_RATE:
                raise ConfigurationError(
                    f"RetryBudget {name} must be a number from 0 to {_MAX_RATE:,.0f}, got "
                    f"{value!r} (percent: the share of recent requests that may be retried, "
                    "e.g. 20; min_per_second: retries always allowed per second, e.g. 10)"
                )
        if not math.isfinite(window) or window < 1:
            raise ConfigurationError(
                f"RetryBudget window must be at least 1 second, got {window!r} (Finagle uses 10)"
            )
        self.percent = float(percent)
        self.min_per_second = float(min_per_second)
        self.window = float(window)
        slots = math.ceil(window)
        self._buckets = [0] * slots
        self._stamps = [-1] * slots
        self._deposit = round(percent / 100 * _SCALE)
        self._reserve = round(min_per_second * window * _SCALE)

    def _add(self, amount: int, now: float) -> None:
        second = int(now)
        slot = second % len(self._buckets)
        if self._stamps[slot] != second:
            self._stamps[slot] = second
            self._buckets[slot] = 0
        self._buckets[slot] += amount

    def _sum(self, now: float) -> int:
        second = int(now)
        oldest = second - len(self._buckets)
        return sum(
            value
            for value, stamp in zip(self._buckets, self._stamps, strict=True)
            if stamp > oldest
        )

    def deposit(self) -> None:
        """One request was sent (its first attempt)."""
        if self._deposit:
            self._add(self._deposit, monotonic())

    def can_retry(self) -> bool:
        """Would a retry be allowed now? (Nothing is withdrawn.)"""
        return self._sum(monotonic()) + self._reserve >= _SCALE

    def withdraw(self) -> bool:
        """Take one retry from the budget; False (nothing taken) when it is spent."""
        now = monotonic()
        if self._sum(now) + self._reserve < _SCALE:
            return False
        self._add(-_SCALE, now)
        return True

    @property
    def balance(self) -> float:
        """Retries the budget would allow now."""
        return max(self._sum(monotonic()) + self._reserve, 0) / _SCALE

    def __repr__(self) -> str:
        return (
            f"RetryBudget({self.percent:g}% + {self.min_per_second:g}/s over "
            f"{self.window:g}s; {self.balance:.1f} retries left)"
        )
