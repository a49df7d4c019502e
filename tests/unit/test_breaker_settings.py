"""Circuit breakers on every backend: settings, specs, defaults and the backoff rules."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from resync.core.exceptions import DatabasePoolTimeoutError, SettingsError
from resync.core.pools.base_pool import ConnectionPool, ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.pools.kernel.pacing import ConnectBackoff
from resync.core.pools.manager.specs import PoolSpec, breaker_config, build_pool, pool_specs
from resync.core.pools.redis_pool import RedisConnectionPool
from resync.core.resilience import (
    BACKEND_BREAKER_DEFAULTS,
    BreakerState,
    CircuitBreaker,
    CircuitBreakerConfig,
)
from resync.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(Settings.model_fields):
        monkeypatch.delenv(name, raising=False)


def config(name: str = "p") -> ConnectionPoolConfig:
    return ConnectionPoolConfig(pool_name=name, min_size=0, max_size=2)


# --- settings ----------------------------------------------------------------------


def test_breakers_are_on_by_default_with_each_backends_thresholds() -> None:
    s = Settings()
    for prefix, backend in (("DB", "database"), ("REDIS", "redis"), ("HTTP", "http")):
        defaults = BACKEND_BREAKER_DEFAULTS[backend]
        assert getattr(s, f"{prefix}_BREAKER_ENABLED") is True
        assert getattr(s, f"{prefix}_BREAKER_FAILURE_THRESHOLD") == defaults.failure_threshold
        assert getattr(s, f"{prefix}_BREAKER_RECOVERY_TIMEOUT") == defaults.recovery_timeout
    assert BACKEND_BREAKER_DEFAULTS["database"].recovery_timeout == 1.0
    assert BACKEND_BREAKER_DEFAULTS["http"].recovery_timeout == 30.0


def test_breaker_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_BREAKER_FAILURE_THRESHOLD", "3")
    monkeypatch.setenv("DB_BREAKER_RECOVERY_TIMEOUT", "2.5")
    monkeypatch.setenv("REDIS_BREAKER_ENABLED", "off")
    s = Settings()
    assert s.DB_BREAKER_FAILURE_THRESHOLD == 3
    assert s.DB_BREAKER_RECOVERY_TIMEOUT == 2.5
    assert s.REDIS_BREAKER_ENABLED is False


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("DB_BREAKER_FAILURE_THRESHOLD", "0", "set DB_BREAKER_ENABLED=false"),
        ("REDIS_BREAKER_FAILURE_THRESHOLD", "5000", "between 1 and 1000"),
        ("HTTP_BREAKER_RECOVERY_TIMEOUT", "0", "more than 0 and at most 3600 seconds"),
        ("DB_BREAKER_RECOVERY_TIMEOUT", "-1", "probe the server"),
        ("REDIS_BREAKER_ENABLED", "maybe", "must be true or false"),
    ],
)
def test_bad_breaker_settings_name_the_variable_and_the_rule(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        Settings()
    assert f"{name}: " in str(caught.value)
    assert says in str(caught.value)


# --- specs -------------------------------------------------------------------------


def test_every_pool_built_from_settings_gets_its_backends_breaker() -> None:
    s = Settings(
        REDIS_URL="redis://127.0.0.1:6379/0",
        TWS_BASE_URL="https://api.example.com",
        DB_BREAKER_FAILURE_THRESHOLD=7,
        REDIS_BREAKER_RECOVERY_TIMEOUT=4.0,
        HTTP_BREAKER_ENABLED=False,
        POOLS={
            "reports": {"url": "sqlite+aiosqlite:///:memory:"},
            "cache2": {"url": "redis://127.0.0.1:6379/1"},
            "billing": {"url": "https://billing.example.com"},
        },
    )
    specs = {spec.name: spec for spec in pool_specs(s)}
    db = CircuitBreakerConfig(failure_threshold=7, recovery_timeout=1.0)
    redis = CircuitBreakerConfig(failure_threshold=5, recovery_timeout=4.0)
    assert specs["database"].breaker == db
    assert specs["reports"].breaker == db
    assert specs["redis"].breaker == redis
    assert specs["cache2"].breaker == redis
    assert specs["tws_http"].breaker is False
    assert specs["billing"].breaker is False
    assert "breaker=" in repr(specs["database"])
    built = build_pool(specs["database"])
    assert built.circuit_breaker is not None and built.circuit_breaker.config == db
    assert build_pool(specs["redis"]).circuit_breaker is not None
    assert build_pool(specs["tws_http"]).circuit_breaker is None


def test_a_settings_stand_in_without_breaker_fields_gets_the_defaults() -> None:
    class Partial:
        DATABASE_URL = "sqlite+aiosqlite:///:memory:"

    assert breaker_config(Partial(), "database") == BACKEND_BREAKER_DEFAULTS["database"]
    assert breaker_config(Partial(), "http") == BACKEND_BREAKER_DEFAULTS["http"]
    # A spec made by hand (six fields, as before) means the backend's defaults.
    spec = PoolSpec("db", "database", config("db"), "sqlite+aiosqlite:///:memory:", True, {})
    assert spec.breaker is True
    pool = build_pool(spec)
    assert pool.circuit_breaker is not None
    assert pool.circuit_breaker.config == BACKEND_BREAKER_DEFAULTS["database"]


# --- constructors ------------------------------------------------------------------


def test_pools_constructed_without_the_argument_have_their_backends_breaker() -> None:
    pools: list[ConnectionPool[Any]] = [
        DatabaseConnectionPool(config(), "sqlite:///:memory:"),  # the seed's call
        RedisConnectionPool(config(), "redis://127.0.0.1:6379/0"),
        HTTPConnectionPool(config(), "https://api.example.com"),
    ]
    for pool in pools:
        breaker = pool.circuit_breaker
        assert breaker is not None, pool
        assert breaker.config == BACKEND_BREAKER_DEFAULTS[pool.backend]
        assert pool.get_stats_snapshot()["circuit_breaker"]["state"] == "closed"


@pytest.mark.parametrize("off", [False, None])
def test_false_or_none_means_no_breaker(off: bool | None) -> None:
    assert (
        DatabaseConnectionPool(config(), "sqlite:///:memory:", circuit_breaker=off).circuit_breaker
        is None
    )
    assert (
        RedisConnectionPool(config(), "redis://h:6379/0", circuit_breaker=off).circuit_breaker
        is None
    )


def test_a_replica_gets_a_breaker_of_its_own_with_the_primarys_thresholds() -> None:
    shared = CircuitBreaker("primary", CircuitBreakerConfig(failure_threshold=2))
    pool = DatabaseConnectionPool(
        config(),
        "postgresql+asyncpg://u@primary/db",
        replica_urls="postgresql+asyncpg://u@replica/db",
        circuit_breaker=shared,
    )
    assert pool.circuit_breaker is shared
    (replica,) = pool.replicas
    assert replica.circuit_breaker is not None and replica.circuit_breaker is not shared
    assert replica.circuit_breaker.config == shared.config


# --- breaker outcomes without a server ------------------------------------------------


def test_only_failures_of_the_backend_count_for_a_lease_body() -> None:
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    pool = DatabaseConnectionPool(config(), "sqlite:///:memory:")
    breaker = pool.circuit_breaker
    assert breaker is not None
    lost = OperationalError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    for answered in (
        ProgrammingError("SELEC 1", {}, Exception("syntax")),
        IntegrityError("INSERT", {}, Exception("duplicate key")),
        ValueError("the caller's own"),
    ):
        pool._record_outcome(answered)
    assert breaker.total_failures == 0 and breaker.total_successes == 3
    for no_outcome in (
        asyncio.CancelledError(),
        TimeoutError(),  # the caller's asyncio.timeout around a statement
        DatabasePoolTimeoutError("another pool's", pool_name="other"),
    ):
        pool._record_outcome(no_outcome)
    assert breaker.total_failures == 0 and breaker.total_successes == 3
    for _ in range(breaker.config.failure_threshold):
        pool._record_outcome(lost)
    assert breaker.state is BreakerState.OPEN


def test_checkout_failures_that_count_for_the_database_breaker() -> None:
    from sqlalchemy.exc import InterfaceError

    pool = DatabaseConnectionPool(config(), "sqlite:///:memory:")
    assert pool._is_connect_failure(ConnectionRefusedError())
    assert pool._is_connect_failure(TimeoutError())
    assert pool._is_connect_failure(InterfaceError("connect", {}, Exception("too many clients")))
    assert not pool._is_connect_failure(DatabasePoolTimeoutError("queue", pool_name="p"))


def test_redis_wrongtype_is_an_answer_and_a_reset_a_failure() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError

    pool = RedisConnectionPool(config(), "redis://127.0.0.1:6379/0")
    breaker = pool.circuit_breaker
    assert breaker is not None
    for _ in range(10):
        pool._record_outcome(ResponseError("WRONGTYPE Operation against a key"))
    assert breaker.state is BreakerState.CLOSED and breaker.total_failures == 0
    for _ in range(5):
        pool._record_outcome(RedisConnectionError("Connection reset by peer"))
    assert breaker.state is BreakerState.OPEN


# --- the background rules ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_connect_backoff_spaces_attempts_doubling_to_the_cap() -> None:
    clock = Clock()
    backoff = ConnectBackoff(first=0.5, cap=4.0, clock=clock)
    assert backoff.may_connect()
    delays = [backoff.failed(OSError()) for _ in range(6)]
    for delay, window in zip(delays, (0.5, 1.0, 2.0, 4.0, 4.0, 4.0), strict=True):
        assert window / 2 <= delay <= window
    assert not backoff.may_connect()
    clock.now += delays[-1]
    assert backoff.may_connect()
    backoff.succeeded()
    assert backoff.failures == 0 and backoff.may_connect()
    assert backoff.failed(OSError()) <= 0.5


def test_connect_backoff_asks_the_breaker_and_reports_to_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        "p", CircuitBreakerConfig(failure_threshold=2, recovery_timeout=1.0), clock=clock
    )
    backoff = ConnectBackoff(lambda: breaker, first=0.01, cap=0.01, clock=clock)
    backoff.failed(OSError())
    clock.now += 1
    backoff.failed(OSError())
    assert breaker.state is BreakerState.OPEN
    clock.now += 0.5
    assert not backoff.may_connect()  # open: no reconnect of the pool's own
    assert breaker.rejected_count == 0  # ... and no caller was rejected
    clock.now += 0.6
    assert backoff.may_connect()  # half-open: this refill is the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # one probe per window
    backoff.succeeded()
    assert breaker.state is BreakerState.CLOSED
    # A closed pool's error is no failure of the backend.
    from resync.core.exceptions import RedisPoolClosedError

    backoff.failed(RedisPoolClosedError("closed", pool_name="p"))
    assert breaker.total_failures == 2


def test_a_commit_on_a_broken_connection_counts_a_failed_commit_does_not() -> None:
    from resync.core.exceptions import DatabaseCommitUnknownError, DatabaseError

    pool = DatabaseConnectionPool(config("db"), "sqlite:///:memory:")
    breaker = pool.circuit_breaker
    assert breaker is not None
    pool._record_outcome(None, DatabaseError("commit failed and was rolled back", pool_name="db"))
    pool._record_outcome(None, asyncio.CancelledError())
    assert breaker.total_failures == 0
    pool._record_outcome(None, DatabaseCommitUnknownError("lost during COMMIT", pool_name="db"))
    assert breaker.total_failures == 1
    # Another pool's error, surfacing from this lease's release, is not this server's.
    pool._record_outcome(None, DatabaseCommitUnknownError("lost", pool_name="other"))
    assert breaker.total_failures == 1
