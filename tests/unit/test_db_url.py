"""Database URLs and engine options: parsed, upgraded and masked before any I/O."""

from __future__ import annotations

import ssl

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from resync.core.exceptions import DatabaseError, DatabaseSetupError, PoolConfigError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.database.url import engine_arguments, parse_database_url, shared_memory_url
from resync.core.pools.db_pool import DatabaseConnectionPool

CONFIG = ConnectionPoolConfig(pool_name="db", min_size=1, max_size=3, connection_timeout=2.5)


@pytest.mark.parametrize(
    ("given", "drivername"),
    [
        ("sqlite:///:memory:", "sqlite+aiosqlite"),
        ("sqlite+pysqlite:///app.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///app.db", "sqlite+aiosqlite"),
        ("postgresql://u:p@db/app", "postgresql+asyncpg"),
        ("postgres://u:p@db/app", "postgresql+asyncpg"),
        ("postgresql+psycopg2://u:p@db/app", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u:p@db/app", "postgresql+asyncpg"),
    ],
)
def test_sync_driver_names_are_upgraded_to_the_async_driver(given: str, drivername: str) -> None:
    assert parse_database_url(given).url.drivername == drivername


@pytest.mark.parametrize(
    "given",
    ["sqlite://", "sqlite:///:memory:", "sqlite+aiosqlite:///:memory:", "sqlite:///file::memory:"],
)
def test_memory_urls_are_recognised(given: str) -> None:
    assert parse_database_url(given).is_memory


def test_file_url_is_not_memory() -> None:
    target = parse_database_url("sqlite+aiosqlite:////tmp/app.db")
    assert not target.is_memory
    assert target.display == "sqlite+aiosqlite:////tmp/app.db"


def test_memory_url_is_shown_readably() -> None:
    assert parse_database_url("sqlite:///:memory:").display == "sqlite+aiosqlite:///:memory:"


def test_shared_memory_urls_are_unique_shared_cache_uris() -> None:
    target = parse_database_url("sqlite:///:memory:")
    first, second = shared_memory_url(target), shared_memory_url(target)
    assert first.database != second.database
    assert first.query["cache"] == "shared"
    assert first.query["mode"] == "memory"
    assert first.query["uri"] == "true"


@pytest.mark.parametrize("wrap", [str, SecretStr, make_url])
def test_password_is_masked_and_listed_as_a_secret(wrap: type) -> None:
    target = parse_database_url(wrap("postgresql://app:t0p%40secret@db:5432/app"))
    assert "t0p" not in target.display
    assert "***" in target.display
    assert "t0p@secret" in target.secrets
    assert "t0p%40secret" in target.secrets


@pytest.mark.parametrize(
    "given",
    ["", "   ", "not a url", "postgresql://u:hunter2@db:notaport/app", "sqlite://host/app.db"],
)
def test_unusable_urls_are_refused_without_showing_the_password(given: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_database_url(given)
    assert "hunter2" not in str(caught.value)


def test_non_string_url_is_refused() -> None:
    with pytest.raises(ValueError, match="must be a str"):
        parse_database_url(42)


def test_asyncpg_gets_connect_timeout_and_application_name() -> None:
    target = parse_database_url("postgresql://u@db/app")
    args = engine_arguments(target, CONFIG, {"echo": True}, "resync-db-1")
    assert args["echo"] is True
    assert args["connect_args"]["timeout"] == 2.5
    assert args["connect_args"]["server_settings"] == {"application_name": "resync-db-1"}


def test_user_connect_args_win_and_pass_through_untouched() -> None:
    context = ssl.create_default_context()
    given = {
        "timeout": 9,
        "ssl": context,
        "statement_cache_size": 0,
        "server_settings": {"application_name": "mine", "jit": "off"},
    }
    target = parse_database_url("postgresql+asyncpg://u@db/app")
    args = engine_arguments(target, CONFIG, {"connect_args": given}, "resync-db-1")
    connect_args = args["connect_args"]
    assert connect_args["ssl"] is context
    assert connect_args["timeout"] == 9
    assert connect_args["statement_cache_size"] == 0
    assert connect_args["server_settings"] == {"application_name": "mine", "jit": "off"}
    assert given["server_settings"] == {"application_name": "mine", "jit": "off"}


def test_sqlite_busy_timeout_follows_connection_timeout_unless_set() -> None:
    target = parse_database_url("sqlite:///app.db")
    assert engine_arguments(target, CONFIG, {}, "x")["connect_args"] == {"timeout": 2.5}
    custom = engine_arguments(target, CONFIG, {"connect_args": {"timeout": 0.1}}, "x")
    assert custom["connect_args"] == {"timeout": 0.1}
    in_url = parse_database_url("sqlite:///app.db?timeout=7")
    assert "connect_args" not in engine_arguments(in_url, CONFIG, {}, "x")


@pytest.mark.parametrize(
    ("option", "hint"),
    [
        ("pool_size", "max_size"),
        ("max_overflow", "max_size"),
        ("pool_timeout", "connection_timeout"),
        ("pool_recycle", "max_lifetime"),
        ("poolclass", "keeps the connections"),
    ],
)
def test_pool_options_owned_by_resync_are_refused_with_a_hint(option: str, hint: str) -> None:
    target = parse_database_url("sqlite:///app.db")
    with pytest.raises(PoolConfigError, match=hint):
        engine_arguments(target, CONFIG, {option: 1}, "x")


def test_pool_pre_ping_is_accepted() -> None:
    pool = DatabaseConnectionPool(CONFIG, "sqlite:///app.db", pool_pre_ping=True)
    assert pool._stock.ping_after == 0.0


def test_repr_and_url_hide_the_password() -> None:
    pool = DatabaseConnectionPool(CONFIG, SecretStr("postgresql://app:hunter2@db/app"))
    assert "hunter2" not in repr(pool)
    assert "hunter2" not in pool.url
    assert "'db'" in repr(pool)
    assert "postgresql+asyncpg://app:***@db/app" in repr(pool)


def test_repr_of_unparsable_url_hides_the_password() -> None:
    pool = DatabaseConnectionPool(CONFIG, "postgresql://app:hunter2@db:notaport/app")
    assert "hunter2" not in repr(pool)


def test_memory_database_pool_grants_one_lease_at_a_time() -> None:
    pool = DatabaseConnectionPool(CONFIG, "sqlite:///:memory:")
    assert pool.get_stats_snapshot()["capacity"] == 1


def test_each_pool_gets_its_own_application_name() -> None:
    first = DatabaseConnectionPool(CONFIG, "postgresql://u@db/app")
    second = DatabaseConnectionPool(CONFIG, "postgresql://u@db/app")
    assert first.application_name != second.application_name
    assert first.application_name.startswith("resync-db-")


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "nosuchdialect://u:hunter2@db/app",
        "postgresql+nosuchdriver://u:hunter2@db/app",
        "mysql://u:hunter2@db/app",
    ],
)
async def test_bad_url_or_driver_fails_initialize_with_a_setup_error(url: str) -> None:
    pool = DatabaseConnectionPool(CONFIG, url)
    with pytest.raises(DatabaseSetupError) as caught:
        await pool.initialize()
    assert isinstance(caught.value, DatabaseError)
    assert str(caught.value).startswith("Failed to setup pool 'db'")
    assert "hunter2" not in str(caught.value)
    await pool.close()
