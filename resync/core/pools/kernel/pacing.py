"""Pacing rules every backend shares: drains, lifetimes, maintenance ticks, probes.

One rule each, in one place:

- :func:`expiry` -- a connection opened at ``now`` expires ``max_lifetime``
  later minus up to :data:`LIFETIME_JITTER` (5%), so connections opened
  together do not all expire together;
- :func:`maintenance_tick` -- maintenance wakes every quarter of the shortest
  positive period (idle timeout, lifetime, validation interval), between
  :data:`MIN_TICK` and :data:`MAX_TICK`;
- :func:`jittered` -- a periodic probe (health check, replica probe) sleeps its
  interval +-10% so pools and processes do not probe in step;
- :func:`drain_interval` / :func:`drain_pause` -- below;
- :class:`ConnectBackoff` -- a pool's own reconnects (the refill up to
  ``min_size``, a drain's reopen) after a failed one wait
  :data:`CONNECT_BACKOFF_FIRST` seconds, doubling per failure up to
  :data:`CONNECT_BACKOFF_MAX`, half of each wait at random, so a pool whose
  server is down does not reconnect every maintenance tick and the pools of
  a fleet do not reconnect in step.

Drains: replacements are spread, not bunched.

Replacing every connection at once would make every process of a fleet
reconnect in the same second (TLS handshakes, AUTH, a server's accept queue),
so a drain replaces one connection, waits, replaces the next. By default it
allows one second per connection and at most :data:`MAX_DEFAULT_INTERVAL`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING

from resync.core.exceptions import ResyncError

if TYPE_CHECKING:
    from resync.core.resilience import CircuitBreaker

__all__ = [
    "CONNECT_BACKOFF_FIRST",
    "CONNECT_BACKOFF_MAX",
    "LIFETIME_JITTER",
    "MAX_DEFAULT_INTERVAL",
    "MAX_TICK",
    "MIN_TICK",
    "PROBE_JITTER",
    "SECONDS_PER_CONNECTION",
    "ConnectBackoff",
    "drain_interval",
    "drain_pause",
    "expiry",
    "jittered",
    "maintenance_tick",
]

#: Default pacing: one replacement per second ...
SECONDS_PER_CONNECTION = 1.0
#: ... but a default drain never takes longer than this (seconds).
MAX_DEFAULT_INTERVAL = 30.0


def drain_interval(interval: float | None, count: int) -> float:
    """The interval to spread ``count`` replacements over (``interval`` if given)."""
    if interval is not None:
        if interval < 0:
            raise ValueError(f"drain interval must be >= 0, got {interval:g}")
        return interval
    return min(count * SECONDS_PER_CONNECTION, MAX_DEFAULT_INTERVAL)


def drain_pause(interval: float | None, count: int) -> float:
    """Seconds to wait after each of ``count`` replacements spread over ``interval``."""
    if count <= 0:
        return 0.0
    return drain_interval(interval, count) / count


#: A lifetime is shortened by up to this fraction, at random.
LIFETIME_JITTER = 0.05
#: Maintenance never wakes more often than this (seconds) ...
MIN_TICK = 0.01
#: ... nor less often than this (also the tick when no period is set).
MAX_TICK = 30.0
#: A periodic probe sleeps its interval times 1 +- this fraction.
PROBE_JITTER = 0.1


def expiry(now: float, max_lifetime: float) -> float:
    """When a connection opened at ``now`` expires (``inf`` when ``max_lifetime <= 0``)."""
    if max_lifetime <= 0:
        return math.inf
    return now + max_lifetime * (1 - LIFETIME_JITTER * random.random())


def maintenance_tick(*periods: float) -> float:
    """Seconds between maintenance rounds: a quarter of the shortest positive period."""
    positive = [p for p in periods if p > 0]
    if not positive:
        return MAX_TICK
    return min(max(min(positive) / 4, MIN_TICK), MAX_TICK)


def jittered(interval: float) -> float:
    """``interval`` +-:data:`PROBE_JITTER`, for a probe's sleep between rounds."""
    return interval * random.uniform(1 - PROBE_JITTER, 1 + PROBE_JITTER)


#: After a failed background connect, the next waits this long (at least half) ...
CONNECT_BACKOFF_FIRST = 0.5
#: ... doubling per failure in a row, up to this (seconds).
CONNECT_BACKOFF_MAX = 30.0


class ConnectBackoff:
    """When a pool may open a connection of its own accord (refill, drain).

    Two rules, asked by :meth:`may_connect` before each background connect:

    - the pool's circuit breaker (``breaker()``, if any) must admit it
      (``allow_background``): while open, the pool reconnects no more than a
      lease may; once half-open, the background connect may be the probe,
      and :meth:`succeeded` / :meth:`failed` report its outcome;
    - after ``n`` failed background connects in a row the next waits
      ``d/2 + uniform(0, d/2)`` seconds, ``d = min(first * 2**(n-1), cap)``:
      never less than half of ``d``, so no loop reconnects without a pause,
      and the pools of a fleet do not reconnect in step.

    A success resets the wait. Leases do not ask it: each is bounded by its
    own timeout and, while the server is down, refused by the breaker. No
    I/O, no ``await``.
    """

    __slots__ = ("_breaker", "_cap", "_clock", "_first", "failures", "not_before")

    def __init__(
        self,
        breaker: Callable[[], CircuitBreaker | None] = lambda: None,
        *,
        first: float = CONNECT_BACKOFF_FIRST,
        cap: float = CONNECT_BACKOFF_MAX,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self._breaker = breaker
        self._first = first
        self._cap = cap
        self._clock = clock
        #: Failed background connects in a row.
        self.failures = 0
        #: No background connect before this time (the clock's).
        self.not_before = -math.inf

    def may_connect(self) -> bool:
        """May the pool try a background connect now? (True in half-open: the probe.)"""
        if self._clock() < self.not_before:
            return False
        breaker = self._breaker()
        return breaker is None or breaker.allow_background()

    def failed(self, error: BaseException) -> float:
        """A background connect failed with ``error``: count it (for the breaker
        too, unless it is one of resync's own errors, a closed pool's); returns
        the seconds until the next may run."""
        self.failures += 1
        window = min(self._first * 2.0 ** min(self.failures - 1, 32), self._cap)
        delay = window / 2 + random.uniform(0, window / 2)
        self.not_before = self._clock() + delay
        breaker = self._breaker()
        if breaker is not None and not isinstance(error, ResyncError):
            breaker.record_failure()
        return delay

    def succeeded(self, *, background: bool = True) -> None:
        """A connect worked: the next may run at once. ``background``: it was
        one this object admitted, and the breaker hears of it (a lease's
        reports its own outcome)."""
        self.failures = 0
        self.not_before = -math.inf
        if background:
            breaker = self._breaker()
            if breaker is not None:
                breaker.record_success()
