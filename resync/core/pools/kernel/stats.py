"""Pool statistics: one vocabulary for every backend.

Counters only go up; gauges say how things are now. All of them are plain
attributes updated without a lock: asyncio runs one callback at a time, and no
update has an ``await`` between its read and its write, so none can be lost.

Wait times (queue + connect, seconds) are kept in a bounded window
(``deque(maxlen=MAX_WAIT_TIMES)``) with a running sum, so the average is O(1)
however long the pool lives.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

__all__ = ["MAX_WAIT_TIMES", "STAT_FIELDS", "ConnectionPoolStats", "WaitTimeWindow"]

#: Size of the wait-time window used for ``average_wait_time``.
MAX_WAIT_TIMES = 1000


@dataclass
class ConnectionPoolStats:
    """Counters and gauges of one pool.

    Counters:

    - ``pool_hits``: leases granted.
    - ``pool_misses``: lease attempts that got no connection (timeout,
      overload, circuit open, connect error, pool closed).
    - ``pool_waits``: leases that had to queue before being granted or refused.
    - ``pool_exhaustions``: leases refused because ``connection_timeout`` passed
      with every slot taken.
    - ``pool_overloads``: leases refused as overloaded: at once because
      ``max_waiting`` callers (the bound of their priority) were already
      queued or queue management was shedding load, or dropped from the queue
      by queue management (``admission`` in the stats snapshot has the detail).
    - ``deadline_exceeded``: leases that ran out of the caller's deadline
      (``resync.deadline()``): refused at once, out of time queueing or
      connecting, or cut off during the lease (not ``pool_exhaustions``).
    - ``connection_errors``: failures to open or keep a connection -- connect
      refused, reset or timed out without an answer, a connection lost under
      a lease, a validation that failed -- on every backend.
    - ``server_errors``: errors the server answered with -- bad SQL, a
      constraint violation, a failed commit the server reported, a Redis
      error reply (WRONGTYPE ...), an HTTP 5xx. The connection was fine.
    - ``connection_creations`` / ``connection_closures``: driver connections
      opened and closed.
    - ``leaks_detected``: leases held past ``leak_detection_threshold``.

    Gauges: ``active_connections`` (leases held now), ``idle_connections``
    (open driver connections not leased, where the driver can tell),
    ``waiting_connections`` (callers queued now), ``peak_active``.
    """

    pool_hits: int = 0
    pool_misses: int = 0
    pool_waits: int = 0
    pool_exhaustions: int = 0
    pool_overloads: int = 0
    deadline_exceeded: int = 0
    connection_errors: int = 0
    server_errors: int = 0
    connection_creations: int = 0
    connection_closures: int = 0
    leaks_detected: int = 0
    active_connections: int = 0
    idle_connections: int = 0
    waiting_connections: int = 0
    peak_active: int = 0
    average_wait_time: float = 0.0
    last_health_check: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """Every field, with ``last_health_check`` as an ISO-8601 string (or None)."""
        data = asdict(self)
        checked = data["last_health_check"]
        data["last_health_check"] = checked.isoformat() if checked else None
        return data


#: Names of the fields of :class:`ConnectionPoolStats`, in order.
STAT_FIELDS: tuple[str, ...] = tuple(ConnectionPoolStats.__dataclass_fields__)


class WaitTimeWindow:
    """The last ``maxlen`` wait times and their running sum (O(1) average)."""

    __slots__ = ("_since_resum", "_sum", "values")

    def __init__(self, maxlen: int = MAX_WAIT_TIMES) -> None:
        if maxlen < 1:
            raise ValueError("the wait-time window needs room for at least one value")
        self.values: deque[float] = deque(maxlen=maxlen)
        self._sum = 0.0
        self._since_resum = 0

    def add(self, seconds: float) -> float:
        """Add one wait time; return the new average."""
        values = self.values
        if len(values) == values.maxlen:
            self._sum -= values[0]
        values.append(seconds)
        self._sum += seconds
        self._since_resum += 1
        # Float subtraction drifts; an exact re-sum once per window bounds it
        # while keeping the amortised cost O(1).
        if self._since_resum >= values.maxlen:  # type: ignore[operator]
            self._sum = sum(values)
            self._since_resum = 0
        return self._sum / len(values)

    def average(self) -> float:
        """Mean of the window, 0.0 when empty."""
        return self._sum / len(self.values) if self.values else 0.0

    def __len__(self) -> int:
        return len(self.values)
