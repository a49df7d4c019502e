"""ResyncInstrumentor against the OpenTelemetry SDK, on a real SQLite pool."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import text

from resync.core.exceptions import DatabasePoolTimeoutError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.kernel import observe
from resync.instrumentation.otel import ResyncInstrumentor

SQL_SECRET = "SELECT * FROM users WHERE password = 'hunter2'"


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def finished(self) -> tuple[ReadableSpan, ...]:
        return self.spans.get_finished_spans()

    def histograms(self) -> dict[str, list[Any]]:
        data = self.reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    assert metric.unit == "s"
                    found[metric.name] = list(metric.data.data_points)
        return found


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    tel = Telemetry()
    instrumentor = ResyncInstrumentor()
    instrumentor.instrument(tracer_provider=tel.tracer_provider, meter_provider=tel.meter_provider)
    try:
        yield tel
    finally:
        instrumentor.uninstrument()
        tel.tracer_provider.shutdown()
        tel.meter_provider.shutdown()
    assert observe.observers == ()


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[DatabaseConnectionPool]:
    config = ConnectionPoolConfig(
        pool_name="orders", min_size=1, max_size=2, connection_timeout=5.0
    )
    db = DatabaseConnectionPool(config, f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}")
    await db.initialize()
    try:
        yield db
    finally:
        await db.close()


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_one_span_per_lease_with_times_and_the_error_type(
    telemetry: Telemetry, pool: DatabaseConnectionPool
) -> None:
    for _ in range(2):
        async with pool.get_connection() as session:
            assert (await session.execute(text("SELECT 1"))).scalar() == 1
    async with pool.get_connection() as session:
        await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError):
        async with pool.get_connection() as session:
            raise RuntimeError(SQL_SECRET)

    spans = telemetry.finished()
    assert len(spans) == 4
    for span in spans:
        assert span.name == "resync.lease orders"
        assert span.kind is SpanKind.CLIENT
        a = attrs(span)
        assert a["db.client.connection.pool.name"] == "orders"
        assert a["resync.backend"] == "database"
        assert a["resync.lease.wait_time_s"] >= 0
        assert span.start_time is not None and span.end_time is not None
        assert span.end_time >= span.start_time
        duration = (span.end_time - span.start_time) / 1e9
        total = a["resync.lease.wait_time_s"] + a["resync.lease.hold_time_s"]
        assert duration == pytest.approx(total, abs=1e-6)
    ok, failing = spans[:3], spans[3]
    assert all(s.status.status_code is StatusCode.UNSET for s in ok)
    assert all("error.type" not in attrs(s) for s in ok)
    slept = attrs(spans[2])
    assert slept["resync.lease.hold_time_s"] >= 0.045
    assert slept["resync.lease.wait_time_s"] < slept["resync.lease.hold_time_s"]

    assert failing.status.status_code is StatusCode.ERROR
    assert not failing.status.description
    assert attrs(failing)["error.type"] == "RuntimeError"
    assert not failing.events  # no exception event: its message may carry SQL
    assert all("hunter2" not in repr(attrs(s)) for s in spans)

    points = telemetry.histograms()
    wait, use = points["db.client.connection.wait_time"], points["db.client.connection.use_time"]
    assert [dict(p.attributes) for p in wait] == [{"db.client.connection.pool.name": "orders"}]
    assert wait[0].count == 4 and use[0].count == 4
    assert use[0].sum >= 0.045


async def test_a_lease_that_times_out_is_one_error_span_with_no_hold(
    telemetry: Telemetry, pool: DatabaseConnectionPool
) -> None:
    pool.config.connection_timeout = 0.05
    async with pool.get_connection(), pool.get_connection():
        with pytest.raises(DatabasePoolTimeoutError):
            async with pool.get_connection():
                pass
    spans = telemetry.finished()
    timed_out = spans[0]  # ended first: the two holders end after it
    assert len(spans) == 3
    assert attrs(timed_out)["error.type"] == "DatabasePoolTimeoutError"
    assert attrs(timed_out)["resync.lease.hold_time_s"] == 0
    assert attrs(timed_out)["resync.lease.wait_time_s"] >= 0.04
    assert timed_out.status.status_code is StatusCode.ERROR
    points = telemetry.histograms()
    assert points["db.client.connection.wait_time"][0].count == 3
    assert points["db.client.connection.use_time"][0].count == 2


async def test_after_uninstrument_no_new_spans_and_instrument_is_idempotent(
    pool: DatabaseConnectionPool,
) -> None:
    tel = Telemetry()
    instrumentor = ResyncInstrumentor()
    assert ResyncInstrumentor() is instrumentor
    try:
        instrumentor.instrument(tracer_provider=tel.tracer_provider)
        instrumentor.instrument(tracer_provider=tel.tracer_provider)  # no second observer
        assert instrumentor.is_instrumented_by_opentelemetry
        assert len(observe.observers) == 1
        async with pool.get_connection():
            pass
        assert len(tel.finished()) == 1
        instrumentor.uninstrument()
        instrumentor.uninstrument()
        assert not instrumentor.is_instrumented_by_opentelemetry
        assert observe.observers == ()
        async with pool.get_connection():
            pass
        assert len(tel.finished()) == 1
    finally:
        instrumentor.uninstrument()
        tel.tracer_provider.shutdown()
        tel.meter_provider.shutdown()


def test_importing_without_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "resync.instrumentation.otel")
    with pytest.raises(ImportError, match=r"pip install 'resync\[otel\]'"):
        importlib.import_module("resync.instrumentation.otel")
