"""Overload-control settings reach every pool's config (fixed-name pools and POOLS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resync.core.exceptions import PoolConfigError, SettingsError
from resync.core.pools import ConnectionPoolConfig
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


@pytest.mark.parametrize(
    ("environ", "rule", "named"),
    [
        ({"DB_POOL_QUEUE_TARGET": "0.05"}, "must be set together", ["DB_POOL_QUEUE_INTERVAL"]),
        ({"REDIS_POOL_QUEUE_INTERVAL": "1"}, "must be set together", ["REDIS_POOL_QUEUE_TARGET"]),
        (
            {"HTTP_POOL_QUEUE_TARGET": "2", "HTTP_POOL_QUEUE_INTERVAL": "1"},
            "must be shorter",
            ["HTTP_POOL_QUEUE_TARGET", "HTTP_POOL_QUEUE_INTERVAL"],
        ),
        ({"DB_POOL_QUEUE_TARGET": "inf"}, "finite", ["DB_POOL_QUEUE_TARGET"]),
        ({"DB_POOL_QUEUE_INTERVAL": "1e9"}, "less than or equal", ["DB_POOL_QUEUE_INTERVAL"]),
    ],
)
def test_a_bad_queue_setting_is_a_settings_error_naming_its_variables(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], rule: str, named: list[str]
) -> None:
    # Found by the generated-environment test: an interval alone passed the
    # settings and failed later, when the pool was built.
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=rule) as info:
        Settings()
    shown = " ".join(name for name, _ in info.value.errors) + str(info.value)
    assert all(name in shown for name in named)


def test_a_config_with_a_target_alone_fails_naming_the_pool() -> None:
    with pytest.raises(PoolConfigError, match="must be set together") as info:
        ConnectionPoolConfig(pool_name="reports", queue_target=0.05)
    assert info.value.pool_name == "reports"


def test_a_huge_retry_floor_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1e308 passed the settings and overflowed when the HTTP pool was built.
    monkeypatch.setenv("HTTP_RETRY_BUDGET_MIN_PER_SECOND", "1e308")
    with pytest.raises(SettingsError, match="HTTP_RETRY_BUDGET_MIN_PER_SECOND"):
        Settings()


@pytest.mark.parametrize(
    ("entry", "rule"),
    [
        ('"queue_interval": 1', "must be set together"),
        ('"queue_target": 2, "queue_interval": 1', "must be shorter"),
        ('"min_size": 5, "max_size": 2', r"max_size \(2\) must be >= min_size \(5\)"),
        ('"min_size": 50', r"max_size \(10\) must be >= min_size \(50\).*DB_POOL_MAX_SIZE"),
    ],
)
def test_a_pools_entry_breaking_a_rule_between_fields_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch, entry: str, rule: str
) -> None:
    # These passed the settings and failed only when the pool was built.
    monkeypatch.setenv("POOLS", '{"r": {"url": "sqlite+aiosqlite:///:memory:", ' + entry + "}}")
    with pytest.raises(SettingsError, match=rule) as info:
        Settings()
    assert "POOLS" in str(info.value)
