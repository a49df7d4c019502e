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
- :func:`drain_interval` / :func:`drain_pause` -- below.

Drains: replacements are spread, not bunched.

Replacing every connection at once would make every process of a fleet
reconnect in the same second (TLS handshakes, AUTH, a server's accept queue),
so a drain replaces one connection, waits, replaces the next. By default it
allows one second per connection and at most :data:`MAX_DEFAULT_INTERVAL`.
"""

from __future__ import annotations

import math
import random

__all__ = [
    "LIFETIME_JITTER",
    "MAX_DEFAULT_INTERVAL",
    "MAX_TICK",
    "MIN_TICK",
    "PROBE_JITTER",
    "SECONDS_PER_CONNECTION",
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
