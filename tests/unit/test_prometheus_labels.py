"""Prometheus label names: the OpenTelemetry exporter's names beside the original ones."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.prometheus import build_registry


async def test_scrape_carries_pool_name_and_state_under_both_label_names(tmp_path: Path) -> None:
    config = ConnectionPoolConfig(pool_name="orders", min_size=1, max_size=4)
    # A file database: an in-memory one is capped at a single connection.
    pool = DatabaseConnectionPool(config, f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}")
    await pool.initialize()
    try:
        async with pool.get_connection():
            registry = build_registry(lambda: {"orders": pool}, lambda: {"orders": "healthy"})
            text = generate_latest(registry).decode()
    finally:
        await pool.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    count = families["db_client_connection_count"].samples
    assert {s.labels["state"] for s in count} == {"used", "idle"}
    for sample in count:
        assert sample.labels == {
            "pool": "orders",
            "backend": "database",
            "db_client_connection_pool_name": "orders",
            "state": sample.labels["state"],
            "db_client_connection_state": sample.labels["state"],
        }
    used = next(s for s in count if s.labels["db_client_connection_state"] == "used")
    assert used.value == 1

    (capacity,) = families["db_client_connection_max"].samples
    assert capacity.labels == {
        "pool": "orders",
        "backend": "database",
        "db_client_connection_pool_name": "orders",
    }
    assert capacity.value == 4

    # Every series with a `pool` / `state` label has its OpenTelemetry twin, same value.
    for family in families.values():
        for sample in family.samples:
            if "pool" in sample.labels:
                assert sample.labels["db_client_connection_pool_name"] == sample.labels["pool"]
            if "state" in sample.labels:
                assert sample.labels["db_client_connection_state"] == sample.labels["state"]
    health = families["resync_pool_health_state"].samples
    assert {s.labels["db_client_connection_state"]: s.value for s in health} == {
        "healthy": 1,
        "degraded": 0,
        "down": 0,
    }
