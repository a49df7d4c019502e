"""Pacing shared by the backends' ``drain()``: replacements are spread, not bunched.

Replacing every connection at once would make every process of a fleet
reconnect in the same second (TLS handshakes, AUTH, a server's accept queue),
so a drain replaces one connection, waits, replaces the next. By default it
allows one second per connection and at most :data:`MAX_DEFAULT_INTERVAL`.
"""

from __future__ import annotations

__all__ = ["MAX_DEFAULT_INTERVAL", "SECONDS_PER_CONNECTION", "drain_interval", "drain_pause"]

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
