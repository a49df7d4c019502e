"""Beyond one server, without a server: the PgBouncer profile, replica URLs,
the credentials provider and their settings are checked before any I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from resync.core.exceptions import PoolConfigError, SettingsError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.database.credentials import CredentialSource, DatabaseCredentials
from resync.core.pools.database.pgbouncer import pgbouncer_engine_options
from resync.core.pools.database.topology import split_replica_urls
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.manager.specs import pool_specs
from resync.settings import Settings

SECRET = "r3plica-Pa55"
PG = "postgresql+asyncpg://app@127.0.0.1:5432/app"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No stray .env or environment variables reach the Settings built here."""
    monkeypatch.chdir(tmp_path)
    for name in list(Settings.model_fields):
        monkeypatch.delenv(name, raising=False)


def config(name: str = "db") -> ConnectionPoolConfig:
    return ConnectionPoolConfig(pool_name=name, min_size=1, max_size=2)


# --- PgBouncer profile ---------------------------------------------------------------


def test_transaction_profile_turns_asyncpg_statement_cache_off_and_keeps_other_options() -> None:
    given: dict[str, Any] = {"echo": True, "connect_args": {"command_timeout": 5}}
    options = pgbouncer_engine_options("transaction", "asyncpg", given, "db")
    assert options == {
        "echo": True,
        "connect_args": {"command_timeout": 5, "statement_cache_size": 0},
    }
    assert given == {"echo": True, "connect_args": {"command_timeout": 5}}  # not mutated


@pytest.mark.parametrize("mode", ["off", "session"])
def test_off_and_session_modes_change_nothing(mode: str) -> None:
    given = {"connect_args": {"statement_cache_size": 500}}
    assert pgbouncer_engine_options(mode, "asyncpg", given, "db") == given


@pytest.mark.parametrize(
    ("connect_args", "named"),
    [
        ({"statement_cache_size": 100}, "statement_cache_size=100"),
        ({"prepared_statement_name_func": lambda: "x"}, "prepared_statement_name_func"),
    ],
)
def test_transaction_profile_refuses_options_that_would_name_statements(
    connect_args: dict[str, Any], named: str
) -> None:
    with pytest.raises(PoolConfigError, match=named) as caught:
        pgbouncer_engine_options("transaction", "asyncpg", {"connect_args": connect_args}, "db")
    assert "pool 'db'" in str(caught.value)


def test_transaction_profile_needs_asyncpg() -> None:
    with pytest.raises(PoolConfigError, match="needs a postgresql\\+asyncpg URL"):
        pgbouncer_engine_options("transaction", "aiosqlite", {}, "db")


def test_unknown_pgbouncer_mode_fails_when_the_pool_is_built() -> None:
    with pytest.raises(PoolConfigError, match="pgbouncer must be one of off, session, transaction"):
        DatabaseConnectionPool(config(), PG, pgbouncer="statement")


def test_pool_built_with_the_profile_reports_it() -> None:
    pool = DatabaseConnectionPool(config(), PG, pgbouncer="transaction")
    assert pool.pgbouncer == "transaction"
    assert pool._engine_kwargs["connect_args"]["statement_cache_size"] == 0
    assert pool.get_stats_snapshot()["details"]["pgbouncer"] == "transaction"


# --- replica URLs -------------------------------------------------------------------------


def test_replica_urls_split_on_commas_and_skip_blanks() -> None:
    assert split_replica_urls(" a , ,b,") == ["a", "b"]
    assert split_replica_urls(None) == []
    assert split_replica_urls(["x", "y"]) == ["x", "y"]


def test_each_replica_gets_its_own_named_pool_with_the_primary_sizes() -> None:
    urls = f"postgresql://app:{SECRET}@10.0.0.2/app,postgresql://app:{SECRET}@10.0.0.3/app"
    pool = DatabaseConnectionPool(config("database"), PG, replica_urls=urls, pgbouncer="session")
    assert [replica.name for replica in pool.replicas] == [
        "database-replica-1",
        "database-replica-2",
    ]
    for replica in pool.replicas:
        assert replica.is_replica and not pool.is_replica
        assert replica.config.max_size == pool.config.max_size
        assert replica.pgbouncer == "session"
        assert SECRET not in replica.url
    details = pool.get_stats_snapshot()["details"]
    assert [r["state"] for r in details["replicas"]] == ["starting", "starting"]
    assert details["read_fallbacks"] == 0
    assert SECRET not in repr(details)


def test_invalid_replica_url_fails_when_the_pool_is_built_with_the_password_hidden() -> None:
    with pytest.raises(PoolConfigError, match="replica URL #2 of pool 'db' is invalid") as caught:
        DatabaseConnectionPool(
            config(), PG, replica_urls=[PG, f"postgresql://app:{SECRET}@h:port/db"]
        )
    assert SECRET not in str(caught.value)


def test_sqlite_cannot_be_a_replica() -> None:
    with pytest.raises(PoolConfigError, match="replica URL #1 of pool 'db' is SQLite"):
        DatabaseConnectionPool(config(), PG, replica_urls="sqlite+aiosqlite:///replica.db")


# --- settings -----------------------------------------------------------------------------


def test_replica_urls_setting_is_masked_wherever_settings_are_shown() -> None:
    urls = f"postgresql://app:{SECRET}@10.0.0.2/app, postgresql://app:{SECRET}@10.0.0.3/app"
    settings = Settings(DATABASE_REPLICA_URLS=urls, DB_POOL_PGBOUNCER="Transaction")
    assert settings.DB_POOL_PGBOUNCER == "transaction"
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings.masked())
    assert settings.masked()["DATABASE_REPLICA_URLS"].count("***") == 2
    options = pool_specs(settings)[0].options
    assert options == {"pgbouncer": "transaction", "replica_urls": urls, "statement_timeout": 30.0}


def test_defaults_leave_pgbouncer_off_and_no_replicas() -> None:
    settings = Settings()
    assert settings.DB_POOL_PGBOUNCER == "off"
    assert settings.DATABASE_REPLICA_URLS is None
    assert pool_specs(settings)[0].options == {"statement_timeout": 30.0}


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (f"postgresql://app:{SECRET}@h/db,not a url", "URL #2 must be a SQLAlchemy URL"),
        (f"mysql://app:{SECRET}@h/db", "URL #1 must be a PostgreSQL URL, not 'mysql'"),
    ],
)
def test_bad_replica_urls_are_refused_naming_which_one(value: str, rule: str) -> None:
    with pytest.raises(SettingsError, match="DATABASE_REPLICA_URLS") as caught:
        Settings(DATABASE_REPLICA_URLS=value)
    assert rule in str(caught.value)
    assert SECRET not in str(caught.value)


def test_unknown_pgbouncer_mode_is_refused() -> None:
    with pytest.raises(SettingsError, match="DB_POOL_PGBOUNCER"):
        Settings(DB_POOL_PGBOUNCER="statement")


# --- credentials provider -----------------------------------------------------------------


async def test_provider_may_be_sync_or_async_and_return_a_password_or_credentials() -> None:
    sync_source = CredentialSource(lambda: "token-1", "db")
    assert await sync_source.fetch() == DatabaseCredentials("token-1")

    async def vault() -> DatabaseCredentials:
        return DatabaseCredentials(password="pw-2", user="v-app-7")

    async_source = CredentialSource(vault, "db")
    assert await async_source.fetch() == DatabaseCredentials("pw-2", user="v-app-7")
    secret_source = CredentialSource(lambda: SecretStr("pw-3"), "db")
    assert (await secret_source.fetch()).password == "pw-3"
    assert sync_source.calls == async_source.calls == 1


def test_credentials_repr_hides_the_password() -> None:
    assert "hunter2" not in repr(DatabaseCredentials("hunter2", user="app"))


async def test_provider_failure_is_a_connection_error_naming_the_pool() -> None:
    def broken() -> str:
        raise RuntimeError("vault sealed")

    with pytest.raises(ConnectionError, match="credentials_provider of pool 'db' failed") as caught:
        await CredentialSource(broken, "db").fetch()
    assert "RuntimeError: vault sealed" in str(caught.value)
    with pytest.raises(ConnectionError, match="must return DatabaseCredentials or a str, got int"):
        await CredentialSource(lambda: 42, "db").fetch()


def test_provider_must_be_callable() -> None:
    with pytest.raises(TypeError, match="credentials_provider of pool 'db' must be callable"):
        CredentialSource("not callable", "db")  # type: ignore[arg-type]


async def test_provided_passwords_are_scrubbed_from_the_pool_errors() -> None:
    tokens = iter(["first-token-abc", "second-token-xyz"])
    pool = DatabaseConnectionPool(config(), PG, credentials_provider=lambda: next(tokens))
    source = pool._topology.credentials
    assert source is not None
    await source.fetch()
    await source.fetch()
    scrubbed = pool.scrub("login failed for first-token-abc then second-token-xyz")
    assert "token" not in scrubbed
    assert pool.get_stats_snapshot()["details"]["credential_fetches"] == 2
