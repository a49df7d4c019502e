"""Secret masking, and the hot-path histogram/counter registry."""

from __future__ import annotations

import pytest

from resync.core.metrics import Histogram, RuntimeMetrics
from resync.core.redact import mask_url, scrub, url_secrets


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+asyncpg://app:pw@db/app", "postgresql+asyncpg://app:***@db/app"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://user:p%40ss@cache:6380", "rediss://user:***@cache:6380"),
        ("https://api.example.com/v1", "https://api.example.com/v1"),
        ("sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
        ("postgresql://u@h/db?password=pw&x=1", "postgresql://u@h/db?password=***&x=1"),
    ],
)
def test_mask_url_hides_passwords_only(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_scrub_removes_raw_and_decoded_passwords_from_driver_messages() -> None:
    secrets = url_secrets("postgresql://app:p%40ss@db/app")
    assert "p@ss" in secrets and "p%40ss" in secrets
    text = 'password authentication failed for "app" using p@ss at postgresql://app:p%40ss@db'
    cleaned = scrub(text, secrets)
    assert "p@ss" not in cleaned and "p%40ss" not in cleaned


def test_histogram_counts_into_cumulative_buckets() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        hist.observe(value)
    snap = hist.snapshot()
    assert snap.buckets == ((0.1, 2), (1.0, 3), (float("inf"), 4))
    assert snap.count == 4
    assert snap.sum == pytest.approx(2.65)
    assert hist.quantile(0.5) == 0.1
    assert hist.quantile(1.0) == float("inf")


def test_histogram_rejects_unsorted_buckets() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram((1.0, 0.5))


def test_runtime_metrics_keys_by_name_and_labels() -> None:
    metrics = RuntimeMetrics()
    metrics.record_histogram("acquire", 0.2, {"pool_name": "db", "status": "success"})
    metrics.record_histogram("acquire", 0.4, {"status": "success", "pool_name": "db"})
    metrics.increment_counter("leases", labels={"pool": "db"})
    metrics.increment_counter("leases", 2, labels={"pool": "db"})
    assert metrics.histogram("acquire", {"pool_name": "db", "status": "success"}).count == 2
    assert metrics.get_counter("leases", {"pool": "db"}) == 3
    with pytest.raises(ValueError, match="only go up"):
        metrics.increment_counter("leases", -1)
    assert [name for name, _, _ in metrics.iter_histograms()] == ["acquire"]
