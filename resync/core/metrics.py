"""In-process metrics cheap enough for the lease hot path.

:class:`Histogram` is a fixed-bucket histogram (one ``bisect`` and three
additions per observation, no lock: asyncio runs one callback at a time and
``observe`` never awaits). Each pool owns its wait-time and use-time histograms;
:data:`runtime_metrics` is the process-wide registry for everything else
(the seed's ``runtime_metrics.record_histogram(name, value, labels)``).

Nothing here talks to Prometheus: the service's collector reads these objects
at scrape time and renders them, so the hot path never touches a client library.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_BUCKETS",
    "Histogram",
    "HistogramSnapshot",
    "RuntimeMetrics",
    "runtime_metrics",
]

#: Upper bounds in seconds, from half a millisecond to a minute.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

LabelKey = tuple[tuple[str, str], ...]


def _label_key(labels: Mapping[str, object] | None) -> LabelKey:
    if not labels:
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A consistent copy of a histogram: cumulative counts per upper bound."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float


class Histogram:
    """Fixed-bucket histogram of non-negative values (seconds, usually).

    ``observe`` is synchronous and O(log buckets); reading takes a snapshot.
    """

    __slots__ = ("_bounds", "_counts", "count", "sum")

    def __init__(self, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        if list(buckets) != sorted(set(buckets)):
            raise ValueError("histogram buckets must be strictly increasing")
        self._bounds = buckets
        # One slot per bound plus the +Inf overflow slot.
        self._counts = [0] * (len(buckets) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one value."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self.count += 1
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        """Cumulative counts per upper bound, the last one being ``+Inf``."""
        cumulative = []
        running = 0
        for bound, count in zip((*self._bounds, float("inf")), self._counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return HistogramSnapshot(tuple(cumulative), self.count, self.sum)

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the ``q`` quantile (0 when empty)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError("q must be within [0, 1]")
        if self.count == 0:
            return 0.0
        target = q * self.count
        running = 0
        for bound, count in zip((*self._bounds, float("inf")), self._counts, strict=True):
            running += count
            if running >= target and count:
                return bound
        return float("inf")


@dataclass
class RuntimeMetrics:
    """Process-wide registry of named counters and histograms, keyed by labels."""

    histograms: dict[tuple[str, LabelKey], Histogram] = field(default_factory=dict)
    counters: dict[tuple[str, LabelKey], float] = field(default_factory=dict)

    def histogram(self, name: str, labels: Mapping[str, object] | None = None) -> Histogram:
        """The histogram for ``name`` and ``labels``, created on first use.

        Keep the returned object to skip the lookup on a hot path.
        """
        key = (name, _label_key(labels))
        found = self.histograms.get(key)
        if found is None:
            found = self.histograms[key] = Histogram()
        return found

    def record_histogram(
        self, name: str, value: float, labels: Mapping[str, object] | None = None
    ) -> None:
        """Observe ``value`` in the histogram ``name`` with ``labels``."""
        self.histogram(name, labels).observe(value)

    def increment_counter(
        self, name: str, amount: float = 1, labels: Mapping[str, object] | None = None
    ) -> None:
        """Add ``amount`` (default 1) to the counter ``name`` with ``labels``."""
        if amount < 0:
            raise ValueError("counters only go up; amount must be >= 0")
        key = (name, _label_key(labels))
        self.counters[key] = self.counters.get(key, 0) + amount

    def get_counter(self, name: str, labels: Mapping[str, object] | None = None) -> float:
        """Current value of a counter (0 if it was never incremented)."""
        return self.counters.get((name, _label_key(labels)), 0)

    def iter_histograms(self) -> Iterator[tuple[str, dict[str, str], Histogram]]:
        """Every histogram with its name and labels (for exporters)."""
        for (name, key), hist in list(self.histograms.items()):
            yield name, dict(key), hist

    def iter_counters(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Every counter with its name and labels (for exporters)."""
        for (name, key), value in list(self.counters.items()):
            yield name, dict(key), value

    def reset(self) -> None:
        """Forget everything (tests)."""
        self.histograms.clear()
        self.counters.clear()


#: The process-wide registry.
runtime_metrics = RuntimeMetrics()
