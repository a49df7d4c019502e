"""Prometheus export: a custom collector that reads pool stats at scrape time.

Nothing on the lease path touches prometheus-client: pools keep plain counters
and :class:`~resync.core.metrics.Histogram` objects, and this collector turns
them into metric families when Prometheus scrapes. Connection metrics follow
the OpenTelemetry database-client pool conventions
(``db.client.connection.*``) mapped to Prometheus names; resync's own extras
are ``resync_pool_*``. Every series has ``pool`` and ``backend`` labels, and
the label names OpenTelemetry's Prometheus exporter writes for the same
attributes: ``db_client_connection_pool_name`` (``db.client.connection.pool.name``,
always equal to ``pool``) and, where there is a ``state`` label,
``db_client_connection_state`` (``db.client.connection.state``, equal to
``state``). ``pool`` and ``state`` are kept for one more release so existing
dashboards and alerts keep working; move queries to the OpenTelemetry names.

=============================================  =====  ===========================
metric                                         type   meaning
=============================================  =====  ===========================
db_client_connection_count{state}              gauge  connections idle / used
db_client_connection_max                       gauge  max_size
db_client_connection_idle_min                  gauge  min_size
db_client_connection_pending_requests          gauge  callers queued for a lease
db_client_connection_timeouts_total            count  leases that timed out
db_client_connection_wait_time_seconds         hist   wait for a lease
db_client_connection_use_time_seconds          hist   time a lease was held
resync_pool_leases_total                       count  leases granted
resync_pool_errors_total                       count  backend errors
resync_pool_overloads_total                    count  leases shed (max_waiting, queue management)
resync_pool_deadline_exceeded_total            count  leases out of the caller's deadline
resync_pool_connection_creations_total         count  driver connections opened
resync_pool_connection_closures_total          count  driver connections closed
resync_pool_leaks_total                        count  leases held past the threshold
resync_pool_health_state{state}                gauge  1 for the current health state
resync_pool_circuit_breaker_state              gauge  0 closed, 1 half-open, 2 open
resync_pool_up                                 gauge  1 when the pool is open (ready)
resync_pool_queue_dropping                     gauge  1 while queue management sheds load
resync_pool_queue_drops_total                  count  queued leases dropped (queue management)
resync_pool_refusals_total{priority}           count  leases refused at once, by priority
resync_pool_adaptive_limit                     gauge  leases admitted at once (adaptive limit)
resync_pool_adaptive_limit_samples_total       count  lease times the limit has seen
resync_pool_adaptive_limit_drops_total         count  leases queued because of the limit
=============================================  =====  ===========================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from resync.core.metrics import Histogram, RuntimeMetrics, runtime_metrics
from resync.core.pools.base_pool import ConnectionPool
from resync.core.resilience import STATE_CODES, BreakerState

__all__ = ["PoolCollector", "build_registry"]

HEALTH_STATES = ("healthy", "degraded", "down")
# ``pool`` and ``state`` are the original label names, kept for one release
# (deprecated); ``db_client_connection_pool_name`` / ``db_client_connection_state``
# are the names OpenTelemetry's Prometheus exporter gives the
# ``db.client.connection.pool.name`` / ``db.client.connection.state`` attributes.
# Each pair always carries the same value.
LABELS = ["pool", "backend", "db_client_connection_pool_name"]
STATE_LABELS = [*LABELS, "state", "db_client_connection_state"]

PoolSource = Callable[[], Mapping[str, ConnectionPool[Any]]]
HealthSource = Callable[[], Mapping[str, str]]


def _histogram(
    name: str, doc: str, series: Iterable[tuple[list[str], Histogram]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=LABELS)
    for labels, hist in series:
        snap = hist.snapshot()
        buckets = [(_bound(b), float(c)) for b, c in snap.buckets]
        family.add_metric(labels, buckets, snap.sum)
    return family


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


class PoolCollector(Collector):
    """Yields the metric families of every pool ``pools()`` returns, at scrape time."""

    def __init__(self, pools: PoolSource, health: HealthSource | None = None) -> None:
        self._pools = pools
        self._health = health

    def describe(self) -> list[Metric]:
        # Empty: families depend on the pools present at scrape time.
        return []

    def collect(self) -> Iterator[Metric]:
        pools = dict(self._pools())
        health = dict(self._health()) if self._health is not None else {}
        rows = [([name, pool.backend, name], pool) for name, pool in pools.items()]

        count = GaugeMetricFamily(
            "db_client_connection_count",
            "Connections by state: used = leased now, idle = open and not leased.",
            labels=STATE_LABELS,
        )
        gauges = {
            "max": GaugeMetricFamily(
                "db_client_connection_max", "Most connections (leases) allowed.", labels=LABELS
            ),
            "min": GaugeMetricFamily(
                "db_client_connection_idle_min", "Connections kept open (min_size).", labels=LABELS
            ),
            "pending": GaugeMetricFamily(
                "db_client_connection_pending_requests",
                "Callers waiting for a lease.",
                labels=LABELS,
            ),
            "up": GaugeMetricFamily(
                "resync_pool_up", "1 while the pool is open and accepting leases.", labels=LABELS
            ),
        }
        counters = {
            "pool_exhaustions": (
                "db_client_connection_timeouts",
                "Leases that timed out waiting for a connection.",
            ),
            "pool_hits": ("resync_pool_leases", "Leases granted."),
            "connection_errors": (
                "resync_pool_errors",
                "Failures to open or keep a connection (refused, reset, lost, failed check).",
            ),
            "server_errors": (
                "resync_pool_server_errors",
                "Errors the server answered with (bad SQL, constraint, error reply, HTTP 5xx).",
            ),
            "pool_overloads": (
                "resync_pool_overloads",
                "Leases refused as overloaded (max_waiting, queue management).",
            ),
            "deadline_exceeded": (
                "resync_pool_deadline_exceeded",
                "Leases that ran out of the caller's deadline (resync.deadline).",
            ),
            "connection_creations": ("resync_pool_connection_creations", "Connections opened."),
            "connection_closures": ("resync_pool_connection_closures", "Connections closed."),
            "leaks_detected": ("resync_pool_leaks", "Leases held past the leak threshold."),
        }
        counter_families = {
            key: CounterMetricFamily(name, doc, labels=LABELS)
            for key, (name, doc) in counters.items()
        }
        health_family = GaugeMetricFamily(
            "resync_pool_health_state",
            "1 for the pool's current health state (healthy, degraded, down).",
            labels=STATE_LABELS,
        )
        breaker_family = GaugeMetricFamily(
            "resync_pool_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            labels=LABELS,
        )
        overload = _OverloadFamilies()
        for labels, pool in rows:
            stats = pool.get_stats_snapshot()
            overload.add(labels, stats.get("admission"))
            count.add_metric([*labels, "used", "used"], stats["active_connections"])
            count.add_metric([*labels, "idle", "idle"], stats["idle_connections"])
            gauges["max"].add_metric(labels, stats["capacity"])
            gauges["min"].add_metric(labels, stats["min_size"])
            gauges["pending"].add_metric(labels, stats["waiting_connections"])
            gauges["up"].add_metric(labels, 1 if stats["state"] == "ready" else 0)
            for key, family in counter_families.items():
                family.add_metric(labels, stats[key])
            state = health.get(labels[0])
            if state is not None:
                for candidate in HEALTH_STATES:
                    health_family.add_metric(
                        [*labels, candidate, candidate], 1 if candidate == state else 0
                    )
            breaker = pool.circuit_breaker
            if breaker is not None:
                breaker_family.add_metric(labels, STATE_CODES[BreakerState(breaker.state)])
        yield count
        yield from gauges.values()
        yield from counter_families.values()
        yield _histogram(
            "db_client_connection_wait_time_seconds",
            "Time from asking for a lease to getting it (queue + connect).",
            ((labels, pool.wait_histogram) for labels, pool in rows),
        )
        yield _histogram(
            "db_client_connection_use_time_seconds",
            "Time a lease was held.",
            ((labels, pool.use_histogram) for labels, pool in rows),
        )
        yield health_family
        yield breaker_family
        yield from overload.families()


class _OverloadFamilies:
    """Queue management, priority refusals and the adaptive limit of each pool
    (the ``admission`` key of its stats); the adaptive series only for pools
    with ``adaptive_limit`` on."""

    def __init__(self) -> None:
        self.dropping = GaugeMetricFamily(
            "resync_pool_queue_dropping",
            "1 while queue management (queue_target) sheds load, else 0.",
            labels=LABELS,
        )
        self.drops = CounterMetricFamily(
            "resync_pool_queue_drops",
            "Queued leases failed by queue management (waited past their drop age).",
            labels=LABELS,
        )
        self.refusals = CounterMetricFamily(
            "resync_pool_refusals",
            "Leases refused at once under overload (max_waiting, queue management), by priority.",
            labels=[*LABELS, "priority"],
        )
        self.limit = GaugeMetricFamily(
            "resync_pool_adaptive_limit",
            "Leases admitted at once (the adaptive limit, Gradient2).",
            labels=LABELS,
        )
        self.samples = CounterMetricFamily(
            "resync_pool_adaptive_limit_samples",
            "Lease times the adaptive limit has been fed.",
            labels=LABELS,
        )
        self.limit_drops = CounterMetricFamily(
            "resync_pool_adaptive_limit_drops",
            "Leases that queued because the adaptive limit was below max_size.",
            labels=LABELS,
        )

    def add(self, labels: list[str], admission: Any) -> None:
        if not isinstance(admission, dict):
            return
        self.dropping.add_metric(labels, 1 if admission.get("dropping") else 0)
        self.drops.add_metric(labels, admission.get("queue_drops", 0))
        for priority, count in sorted(admission.get("refused", {}).items()):
            self.refusals.add_metric([*labels, priority], count)
        adaptive = admission.get("adaptive")
        if isinstance(adaptive, dict):
            self.limit.add_metric(labels, adaptive["limit"])
            self.samples.add_metric(labels, adaptive["samples"])
            self.limit_drops.add_metric(labels, adaptive["drops"])

    def families(self) -> Iterator[Metric]:
        yield self.dropping
        yield self.drops
        yield self.refusals
        yield self.limit
        yield self.samples
        yield self.limit_drops


class RuntimeCollector(Collector):
    """Exports :data:`runtime_metrics` as ``resync_runtime_<name>`` families."""

    def __init__(self, metrics: RuntimeMetrics = runtime_metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        hist_families: dict[str, HistogramMetricFamily] = {}
        for name, labels, hist in self._metrics.iter_histograms():
            metric = "resync_runtime_" + _metric_name(name)
            keys = sorted(labels)
            family = hist_families.setdefault(
                metric + "|" + ",".join(keys),
                HistogramMetricFamily(metric, f"runtime histogram {name}", labels=keys),
            )
            snap = hist.snapshot()
            family.add_metric(
                [labels[k] for k in keys],
                [(_bound(b), float(c)) for b, c in snap.buckets],
                snap.sum,
            )
        counter_families: dict[str, CounterMetricFamily] = {}
        for name, labels, value in self._metrics.iter_counters():
            metric = "resync_runtime_" + _metric_name(name)
            keys = sorted(labels)
            counter = counter_families.setdefault(
                metric + "|" + ",".join(keys),
                CounterMetricFamily(metric, f"runtime counter {name}", labels=keys),
            )
            counter.add_metric([labels[k] for k in keys], value)
        seen: set[str] = set()
        families: list[Metric] = [*hist_families.values(), *counter_families.values()]
        for metric_family in families:
            if metric_family.name in seen:  # same name, other labels: Prometheus forbids it
                continue
            seen.add(metric_family.name)
            yield metric_family


def _metric_name(name: str) -> str:
    cleaned = re.sub(r"[^a-zA-Z0-9_]", "_", name).strip("_").lower()
    return cleaned or "unnamed"


def build_registry(pools: PoolSource, health: HealthSource | None = None) -> CollectorRegistry:
    """A fresh registry with the pool collector and the runtime-metrics collector.

    A private registry (not prometheus-client's global one) so that several
    apps in one process -- tests, for instance -- never collide.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(pools, health))
    registry.register(RuntimeCollector())
    return registry
