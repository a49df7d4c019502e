"""Overload-control settings reach every pool's config (fixed-name pools and POOLS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resync.core.exceptions import PoolConfigError
from resync.core.pools.manager.specs import pool_specs
from resync.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(Settings.model_fields):
        monkeypatch.delenv(name, raising=False)


def test_overload_control_is_off_by_default_on_every_pool() -> None:
    specs = pool_specs(Settings(REDIS_URL="redis://127.0.0.1:6379", TWS_BASE_URL="http://x"))
    assert [s.name for s in specs] == ["database", "redis", "tws_http"]
    for spec in specs:
        assert spec.config.queue_target == 0.0
        assert spec.config.queue_interval == 0.0
        assert spec.config.adaptive_limit is False


def test_each_backends_settings_reach_its_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    for prefix, target in (("DB", "0.05"), ("REDIS", "0.02"), ("HTTP", "0.1")):
        monkeypatch.setenv(f"{prefix}_POOL_QUEUE_TARGET", target)
        monkeypatch.setenv(f"{prefix}_POOL_QUEUE_INTERVAL", "1")
    monkeypatch.setenv("HTTP_POOL_ADAPTIVE_LIMIT", "true")
    monkeypatch.setenv(
        "POOLS",
        '{"reports": {"url": "sqlite+aiosqlite:///:memory:", "queue_target": 0.03, '
        '"queue_interval": 0.5, "adaptive_limit": true}}',
    )
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379")
    monkeypatch.setenv("TWS_BASE_URL", "http://upstream")
    configs = {spec.name: spec.config for spec in pool_specs(Settings())}
    got = {
        name: (c.queue_target, c.queue_interval, c.adaptive_limit) for name, c in configs.items()
    }
    assert got == {
        "database": (0.05, 1.0, False),
        "redis": (0.02, 1.0, False),
        "tws_http": (0.1, 1.0, True),
        "reports": (0.03, 0.5, True),
    }


def test_a_target_without_an_interval_fails_naming_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DB_POOL_QUEUE_TARGET", "0.05")
    with pytest.raises(PoolConfigError, match="must be set together") as info:
        pool_specs(Settings())
    assert info.value.pool_name == "database"
