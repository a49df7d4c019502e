"""Adaptive concurrency: the leases a pool admits at once, set from lease times.

The algorithm is **Gradient2** from Netflix's concurrency-limits library
(``Gradient2Limit`` wrapped in its ``WindowedLimit``), with resync's
constants for pools of a few to a few dozen connections. Each lease that ends
is one sample: the seconds it was held (the backend's service time as the
pool sees it). Samples are averaged over a *window*; when a window closes:

- ``short`` = the window's mean lease time; ``long`` = an exponential
  average of the window means (a plain mean over the first
  :data:`WARMUP_WINDOWS` windows, then smoothing ``2 / (LONG_WINDOW + 1)``);
  when ``long`` is more than twice ``short`` (the backend recovered from a
  long slow period) it is cut by 10% so the limit can come back quickly;
- if the pool was *app-limited* (fewer than half the limit in use at the
  busiest moment of the window) the limit is left as it is;
- otherwise ``gradient = clamp(long / short, 0.5, 1.0)`` and
  ``limit = limit * (1 - SMOOTHING) + (gradient * limit + sqrt(limit)) * SMOOTHING``,
  clamped to ``[max(min_size, 1), max_size]``.

So while lease times stay at their long-run level the limit grows by about
``0.2 * sqrt(limit)`` per window up to ``max_size``; when they rise (the
backend slows down: lock contention, a cold cache, an overloaded server)
the gradient falls below 1 and the limit shrinks, by at most 10% a window,
so the pool stops piling more work onto a backend that is already slower;
once ``long`` has caught up with the new level the gradient is 1 again.
Under a slowdown that keeps growing, the gradient stays at its 0.5 clamp and
the limit settles where ``0.5 * L + sqrt(L) = L``: 4 leases (or ``min_size``
if that is higher), never 0.

Constants (Netflix's defaults in brackets):

=================  ===========  =====================================================
``WINDOW_SAMPLES``  10  [10]     a window closes after at least this many samples ...
``WINDOW_MIN``      0.1 s [1 s]  ... and at least this long; a pool's lease times are
                                 ms, and a faster window settles within seconds
``WINDOW_MAX``      1 s  [1 s]   ... or after this long with at least one sample
``LONG_WINDOW``     30 [600]     windows in the long average (about 3 s at 100 ms)
``WARMUP_WINDOWS``  10 [10]      windows averaged plainly before smoothing starts
``SMOOTHING``       0.2 [0.2]    weight of each new estimate
queue allowance     sqrt(limit)  Netflix's GradientLimit; Gradient2's fixed 4 is 40%
                                 of a 10-connection pool
=================  ===========  =====================================================

The limit is applied as the admission gate's capacity (``AdmissionGate.resize``):
a lower limit makes newcomers queue (counted as ``drops`` -- leases held back
by the limit while ``max_size`` had room); slots above it are retired as
leases end, none is taken from a lease. With ``adaptive_limit`` off nothing
here runs: the pool's use-time histogram is a plain :class:`Histogram`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from resync.core.metrics import DEFAULT_BUCKETS, Histogram

if TYPE_CHECKING:
    from resync.core.pools.kernel.admission import AdmissionGate

__all__ = [
    "LONG_WINDOW",
    "SMOOTHING",
    "WARMUP_WINDOWS",
    "WINDOW_MAX",
    "WINDOW_MIN",
    "WINDOW_SAMPLES",
    "AdaptiveLimit",
    "LeaseTimeFeed",
]

WINDOW_SAMPLES = 10
WINDOW_MIN = 0.1
WINDOW_MAX = 1.0
LONG_WINDOW = 30
WARMUP_WINDOWS = 10
SMOOTHING = 0.2
#: Limit changes remembered for ``history`` (time, new limit).
HISTORY = 256


class AdaptiveLimit:
    """Gradient2 over windows of lease times, driving ``gate.capacity``.

    ``floor`` / ``ceiling`` bound the limit (``max(min_size, 1)`` and the
    pool's admission capacity for ``max_size``); it starts at ``ceiling``.
    ``clock`` (seconds) times the windows. Synchronous, no lock: asyncio runs
    one :meth:`sample` at a time. Nothing to close; a closed pool's gate
    refuses leases whatever the limit.
    """

    __slots__ = (
        "_clock",
        "_count",
        "_gate",
        "_inflight",
        "_sum",
        "_window_start",
        "_windows",
        "ceiling",
        "estimate",
        "floor",
        "history",
        "long_rtt",
        "samples",
        "short_rtt",
    )

    def __init__(
        self,
        gate: AdmissionGate,
        floor: int,
        ceiling: int,
        *,
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        if floor < 1 or ceiling < floor:
            raise ValueError(
                f"adaptive limit bounds must satisfy 1 <= floor <= ceiling, got {floor}..{ceiling}"
            )
        self._gate = gate
        self._clock = clock
        self.floor = floor
        self.ceiling = ceiling
        self.estimate = float(ceiling)
        self.samples = 0
        self.short_rtt = 0.0
        self.long_rtt = 0.0
        self._windows = 0
        self._count = 0
        self._sum = 0.0
        self._inflight = 0
        self._window_start = clock()
        self.history: deque[tuple[float, int]] = deque(maxlen=HISTORY)
        gate.ceiling = ceiling
        gate.resize(ceiling)

    @property
    def limit(self) -> int:
        """Leases admitted at once now (the gate's capacity)."""
        return self._gate.capacity

    def sample(self, held: float, inflight: int | None = None) -> None:
        """One lease ended after ``held`` seconds; ``inflight``: leases held as it
        ended (default: the gate's slots in use)."""
        self.samples += 1
        self._count += 1
        self._sum += held
        busy = self._gate.in_use if inflight is None else inflight
        if busy > self._inflight:
            self._inflight = busy
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < WINDOW_MAX and (self._count < WINDOW_SAMPLES or elapsed < WINDOW_MIN):
            return
        self._update(self._sum / self._count, self._inflight, now)
        self._count = 0
        self._sum = 0.0
        self._inflight = 0
        self._window_start = now

    def _update(self, rtt: float, inflight: int, now: float) -> None:
        self._windows += 1
        self.short_rtt = rtt
        if self._windows <= WARMUP_WINDOWS:
            self.long_rtt += (rtt - self.long_rtt) / self._windows
        else:
            self.long_rtt += (rtt - self.long_rtt) * (2.0 / (LONG_WINDOW + 1))
        if rtt > 0 and self.long_rtt / rtt > 2:
            self.long_rtt *= 0.9
        estimate = self.estimate
        if inflight < estimate / 2:
            return  # app-limited: the samples say nothing about a higher limit
        gradient = max(0.5, min(1.0, self.long_rtt / rtt)) if rtt > 0 else 1.0
        proposal = gradient * estimate + math.sqrt(estimate)
        estimate = estimate * (1 - SMOOTHING) + proposal * SMOOTHING
        self.estimate = estimate = max(float(self.floor), min(float(self.ceiling), estimate))
        self._apply(int(estimate), now)

    def _apply(self, limit: int, now: float) -> None:
        gate = self._gate
        if limit != gate.capacity:
            gate.resize(limit)
            self.history.append((now, limit))

    def set_bounds(self, floor: int, ceiling: int) -> None:
        """New sizes (``pool.resize``): clamp the limit into ``[floor, ceiling]``."""
        self.floor = max(1, min(floor, ceiling))
        self.ceiling = ceiling
        self._gate.ceiling = ceiling
        self.estimate = max(float(self.floor), min(float(ceiling), self.estimate))
        self._apply(int(self.estimate), self._clock())

    def snapshot(self) -> dict[str, Any]:
        """The limit and its inputs, for the pool's stats (``/pools``, ``/metrics``)."""
        return {
            "algorithm": "gradient2",
            "limit": self._gate.capacity,
            "estimate": round(self.estimate, 3),
            "min": self.floor,
            "max": self.ceiling,
            "samples": self.samples,
            "drops": self._gate.limit_drops,
            "short_rtt": self.short_rtt,
            "long_rtt": self.long_rtt,
        }


class LeaseTimeFeed(Histogram):
    """The pool's use-time histogram when ``adaptive_limit`` is on: it also
    hands each lease time to the :class:`AdaptiveLimit`.

    The lease already records every lease time in ``pool.use_histogram``
    exactly once, as its slot is given back; feeding the limit from there
    keeps the lease path free of any adaptive-limit test when it is off.
    """

    __slots__ = ("_limit",)

    def __init__(self, limit: AdaptiveLimit, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        super().__init__(buckets)
        self._limit = limit

    def observe(self, value: float) -> None:
        """Record one lease time and feed it to the limit."""
        super().observe(value)
        self._limit.sample(value)
