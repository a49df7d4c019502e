"""OpenTelemetry for resync's pools: one span per lease, wait and use histograms.

::

    from resync.instrumentation.otel import ResyncInstrumentor

    ResyncInstrumentor().instrument()  # the global tracer and meter providers
    # or: .instrument(tracer_provider=..., meter_provider=...)

Every lease of every pool of the process then ends with:

- a span ``resync.lease <pool>`` (kind ``CLIENT``), child of the span current
  in the task that took the lease, from the moment the lease was asked for to
  the moment its release began, with the attributes
  ``db.client.connection.pool.name``, ``resync.backend``,
  ``resync.lease.wait_time_s`` and ``resync.lease.hold_time_s``. A lease that
  ended with an error (raised in the ``async with`` body, by its release, or
  while it was being acquired: timeout, overload, closed pool ...) has status
  ``ERROR`` and ``error.type`` = the exception's class name. The exception's
  message is never recorded: it may carry SQL and bound values.
- the histograms ``db.client.connection.wait_time`` and
  ``db.client.connection.use_time`` (unit ``s``), attribute
  ``db.client.connection.pool.name``; a lease that got no connection records
  its wait only.

It works through the kernel's lease-observer hook
(:mod:`resync.core.pools.kernel.observe`); :meth:`ResyncInstrumentor.uninstrument`
removes the observer, after which leases cost what they cost without it.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised with opentelemetry hidden
    raise ImportError(
        "resync.instrumentation.otel needs opentelemetry-api: pip install 'resync[otel]'"
    ) from exc

from resync import __version__
from resync.core.pools.kernel.observe import add_observer, remove_observer

__all__ = ["ResyncInstrumentor"]

POOL_NAME = "db.client.connection.pool.name"
BACKEND = "resync.backend"
WAIT_TIME = "resync.lease.wait_time_s"
HOLD_TIME = "resync.lease.hold_time_s"
ERROR_TYPE = "error.type"
#: Seconds, from 100 µs to 10 s (the SDK's default buckets are for milliseconds).
BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _LeaseTelemetry:
    """The lease observer: turns one ended lease into a span and two histogram points."""

    def __init__(self, tracer: trace.Tracer, meter: metrics.Meter) -> None:
        self._tracer = tracer
        # perf_counter() seconds + offset = time_ns(): spans need wall-clock
        # nanoseconds, leases measure with the monotonic perf_counter.
        self._offset_ns = time.time_ns() - int(time.perf_counter() * 1e9)
        self._wait = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="Time it took to obtain a lease (queue plus connect).",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )
        self._use = meter.create_histogram(
            "db.client.connection.use_time",
            unit="s",
            description="Time between getting a lease and starting its release.",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )

    def lease_ended(
        self,
        pool_name: str,
        backend: str,
        started: float,
        waited: float,
        held: float,
        error: BaseException | None,
    ) -> None:
        start_ns = self._offset_ns + int(started * 1e9)
        attributes: dict[str, Any] = {
            POOL_NAME: pool_name,
            BACKEND: backend,
            WAIT_TIME: waited,
            HOLD_TIME: held,
        }
        if error is not None:
            attributes[ERROR_TYPE] = type(error).__name__
        span = self._tracer.start_span(
            f"resync.lease {pool_name}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=start_ns,
            record_exception=False,
            set_status_on_exception=False,
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR))  # no description: it would be the message
        span.end(end_time=start_ns + int((waited + held) * 1e9))
        pool_attributes = {POOL_NAME: pool_name}
        self._wait.record(waited, pool_attributes)
        if held:
            self._use.record(held, pool_attributes)


class ResyncInstrumentor:
    """Spans and histograms for every lease, in the style of ``opentelemetry-instrumentation-*``.

    One instance per process (``ResyncInstrumentor()`` always returns it), so
    ``instrument`` and ``uninstrument`` pair up wherever they are called.
    ``instrument`` again while instrumented does nothing; ``uninstrument``
    when not instrumented does nothing.
    """

    _instance: ClassVar[ResyncInstrumentor | None] = None
    _observer: _LeaseTelemetry | None

    def __new__(cls) -> ResyncInstrumentor:
        if cls._instance is None:
            instance = super().__new__(cls)
            instance._observer = None
            cls._instance = instance
        return cls._instance

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        """True between :meth:`instrument` and :meth:`uninstrument`."""
        return self._observer is not None

    def instrument(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        """Start a span and histogram points per lease (global providers unless given)."""
        if self._observer is not None:
            return
        tracer = trace.get_tracer(__name__, __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter(__name__, __version__, meter_provider=meter_provider)
        self._observer = _LeaseTelemetry(tracer, meter)
        add_observer(self._observer)

    def uninstrument(self) -> None:
        """Stop: a lease that ends after this produces no span and no point."""
        observer, self._observer = self._observer, None
        if observer is not None:
            remove_observer(observer)
