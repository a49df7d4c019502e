"""Settings come from the environment and .env, validated, with secrets hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from resync.core.exceptions import SettingsError
from resync.settings import Settings

SECRET = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run each test in an empty directory (no stray .env) with no RESYNC-ish vars."""
    monkeypatch.chdir(tmp_path)
    for name in list(Settings.model_fields):
        monkeypatch.delenv(name, raising=False)


def test_defaults_use_embedded_sqlite_and_leave_redis_and_http_off() -> None:
    s = Settings()
    assert s.DATABASE_URL == "sqlite+aiosqlite:///:memory:"
    assert s.REDIS_URL is None
    assert s.TWS_BASE_URL is None
    assert s.HTTP_ENABLE_HTTP2 is False


def test_values_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_POOL_MAX_SIZE", "42")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("HTTP_ENABLE_HTTP2", "true")
    s = Settings()
    assert s.DB_POOL_MAX_SIZE == 42
    assert s.REDIS_URL == "redis://127.0.0.1:6379/3"
    assert s.HTTP_ENABLE_HTTP2 is True


def test_values_are_read_from_a_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DB_POOL_MIN_SIZE=3\nTWS_BASE_URL=https://api.example.com\n")
    s = Settings()
    assert s.DB_POOL_MIN_SIZE == 3
    assert s.TWS_BASE_URL == "https://api.example.com"


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("DB_POOL_MIN_SIZE", "-1", "greater than or equal to 0"),
        ("DB_POOL_MAX_SIZE", "0", "greater than or equal to 1"),
        ("REDIS_POOL_CONNECT_TIMEOUT", "0", "greater than 0"),
        ("HTTP_POOL_IDLE_TIMEOUT", "-5", "greater than or equal to 0"),
        ("DB_POOL_MAX_SIZE", "lots", "valid integer"),
        ("REDIS_URL", "http://cache:6379", "redis://"),
        ("TWS_BASE_URL", "ftp://files.example.com", "http:// or https://"),
        ("DATABASE_URL", "not a url at all", "SQLAlchemy URL"),
        ("LOG_LEVEL", "chatty", "DEBUG"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_rule(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, rule: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        Settings()
    message = str(info.value)
    assert variable in message
    assert rule in message
    assert "Traceback" not in message
    assert isinstance(info.value, ValueError)
    assert [name for name, _ in info.value.errors] == [variable]


def test_max_below_min_names_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_POOL_MIN_SIZE", "8")
    monkeypatch.setenv("REDIS_POOL_MAX_SIZE", "4")
    with pytest.raises(SettingsError, match=r"REDIS_POOL_MAX_SIZE \(4\) must be >= REDIS_POOL_MIN"):
        Settings()


def test_every_broken_rule_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_POOL_MIN_SIZE", "-1")
    monkeypatch.setenv("HTTP_POOL_CONNECT_TIMEOUT", "-1")
    with pytest.raises(SettingsError) as info:
        Settings()
    assert {name for name, _ in info.value.errors} == {
        "DB_POOL_MIN_SIZE",
        "HTTP_POOL_CONNECT_TIMEOUT",
    }


def test_passwords_never_appear_in_repr_or_masked_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql+asyncpg://app:{SECRET}@db:5432/app")
    monkeypatch.setenv("REDIS_URL", f"redis://:{SECRET}@cache:6379/0")
    monkeypatch.setenv("TWS_BASE_URL", f"https://user:{SECRET}@api.example.com")
    s = Settings()
    assert SECRET not in repr(s)
    assert SECRET not in str(s)
    assert SECRET not in str(s.masked())
    assert s.masked()["DATABASE_URL"] == "postgresql+asyncpg://app:***@db:5432/app"
    assert s.DATABASE_URL.endswith("@db:5432/app")  # the real value is still usable


def test_a_bad_url_with_a_password_does_not_echo_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"memcached://u:{SECRET}@cache:11211")
    with pytest.raises(SettingsError) as info:
        Settings()
    assert SECRET not in str(info.value)
    assert "REDIS_URL" in str(info.value)


def test_empty_optional_urls_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "")
    monkeypatch.setenv("TWS_BASE_URL", "  ")
    s = Settings()
    assert s.REDIS_URL is None and s.TWS_BASE_URL is None


def test_module_level_settings_object_exists() -> None:
    from resync.settings import settings

    assert isinstance(settings, Settings)


def test_importing_resync_never_reads_the_environment() -> None:
    """An unrelated LOG_LEVEL=trace of the user's app must not break ``import resync.api``."""
    import os
    import subprocess
    import sys

    code = (
        "import resync, resync.api, resync.core.pools, resync.core.pools.pool_manager\n"
        "import resync.settings as s\n"
        "from resync.core.exceptions import SettingsError\n"
        "try:\n"
        "    s.get_settings()\n"
        "except SettingsError as exc:\n"
        "    print('refused:', [name for name, _ in exc.errors])\n"
    )
    env = {**os.environ, "LOG_LEVEL": "trace"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused: ['LOG_LEVEL']"


def test_process_settings_are_built_once_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import resync.settings as module

    monkeypatch.setenv("DB_POOL_MAX_SIZE", "7")
    module.reset_settings()
    try:
        first = module.get_settings()
        assert first.DB_POOL_MAX_SIZE == 7
        assert module.settings is first and module.get_settings() is first
    finally:
        module.reset_settings()


def test_model_dump_and_json_never_show_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """The URL settings behave like SecretStr wherever settings are serialised."""
    monkeypatch.setenv("DATABASE_URL", f"postgresql+asyncpg://app:{SECRET}@db/app")
    monkeypatch.setenv("DATABASE_REPLICA_URLS", f"postgresql+asyncpg://ro:{SECRET}@r1/app")
    monkeypatch.setenv("REDIS_URL", f"redis://:{SECRET}@cache:6379/0")
    monkeypatch.setenv("TWS_BASE_URL", f"https://svc:{SECRET}@api.example.com")
    monkeypatch.setenv("ADMIN_TOKEN", SECRET * 3)
    s = Settings()
    dumped = s.model_dump()
    for text in (str(dumped), s.model_dump_json(), repr(s), str(s), str(s.masked())):
        assert SECRET not in text
    assert dumped["DATABASE_URL"] == "postgresql+asyncpg://app:***@db/app"
    # The values themselves stay usable by the pools.
    assert SECRET in s.DATABASE_URL and SECRET in (s.REDIS_URL or "")


def test_log_format_accepts_text_or_json_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().LOG_FORMAT == "text"
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    assert Settings().LOG_FORMAT == "json"
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        Settings()


def test_named_pools_are_read_as_json_with_their_url_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from resync.core.pools.manager.specs import pool_specs

    monkeypatch.setenv(
        "POOLS",
        '{"reports": {"url": "postgresql+asyncpg://ro:' + SECRET + '@replica/app", '
        '"max_size": 1}, "billing": {"url": "https://billing.internal", "required": true}, '
        '"sessions": {"url": "redis://127.0.0.1:6379/3"}}',
    )
    s = Settings()
    for text in (repr(s), str(s.model_dump()), s.model_dump_json()):
        assert SECRET not in text
    specs = {spec.name: spec for spec in pool_specs(s)}
    assert [specs[n].backend for n in ("reports", "billing", "sessions")] == [
        "database",
        "http",
        "redis",
    ]
    assert specs["reports"].config.max_size == 1 and specs["reports"].config.min_size == 1
    assert specs["billing"].required is True and specs["sessions"].required is False
    assert SECRET in specs["reports"].url  # the pool still gets the real URL


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ('{"redis": {"url": "redis://h/0"}}', "with its own settings"),
        ('{"Bad Name": {"url": "redis://h/0"}}', "must be lower-case"),
        ('{"x": {"url": "ftp://h"}}', "url must start with"),
        ('{"x": {"url": "postgresql://h/db"}}', "postgresql+asyncpg"),
        ('{"x": {"url": "redis://h/0", "max_size": 0}}', "greater than or equal to 1"),
        ('{"x": {"url": "redis://h/0", "colour": "red"}}', "Extra inputs"),
        ("not json", "must be a JSON object"),
    ],
)
def test_a_bad_named_pool_names_the_entry_and_the_rule(
    monkeypatch: pytest.MonkeyPatch, value: str, rule: str
) -> None:
    monkeypatch.setenv("POOLS", value)
    with pytest.raises(SettingsError) as info:
        Settings()
    assert "POOLS" in str(info.value) and rule in str(info.value)
