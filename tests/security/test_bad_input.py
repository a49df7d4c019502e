"""Hostile input: generated settings, configs and URLs fail only with typed, named errors.

- Settings from a generated environment either load -- and then every pool
  they enable can be built -- or raise :class:`SettingsError` naming one of
  the variables that were set.
- ``ConnectionPoolConfig`` values of any type either validate or raise
  :class:`PoolConfigError` naming one of the fields that were passed.
- The URL arguments of the three pool constructors, and ``initialize()`` on
  what they accept, raise only resync's own errors.

In every case the password planted in the URLs never appears in the message
or in the formatted traceback (causes included).
"""

from __future__ import annotations

import os
import re
import tempfile
import traceback
from dataclasses import fields
from typing import Any
from unittest import mock
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resync.core.exceptions import PoolConfigError, ResyncError, SettingsError
from resync.core.pools.base_pool import ConnectionPool, ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.pools.manager.specs import build_pools
from resync.core.pools.redis.factory import create_redis_pool
from resync.core.pools.redis_pool import RedisConnectionPool
from resync.settings import Settings
from tests.helpers.net import free_port

SECRET = "Zq7Sentinel@:/%Tail9x"
FRAGMENTS = ("Zq7Sentinel", "Tail9x")
ENCODED = quote(SECRET, safe="")


def assert_no_secret(error: BaseException) -> None:
    shown = str(error) + "".join(traceback.format_exception(error))
    for fragment in FRAGMENTS:
        assert fragment not in shown, f"the password shows in: {shown}"


# --- generated values ---------------------------------------------------------------------------

env_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", " ", "0", "1", "-1", "1e400", "-0", "0x10", "1_000", "inf", "NaN"]),
)
schemes = st.sampled_from(
    [
        *("postgresql", "postgresql+asyncpg", "postgres", "sqlite", "sqlite+aiosqlite", "mysql"),
        *("redis", "rediss", "unix", "redis+sentinel", "redis+cluster"),
        *("http", "https", "ftp", "", "x+y"),
    ]
)
hosts = st.sampled_from(["127.0.0.1", "[::1]", "[::1", "localhost", "", "h\x01st", "a b"])
ports = st.sampled_from(["", ":1", ":port", ":99999", ":-1", ":0", ":6379"])
# The password goes where a password goes (a user name is shown on purpose).
userinfo = st.sampled_from(
    ["", "u@", f"u:{ENCODED}@", f":{ENCODED}@", f"u:{SECRET}@", f"u:{ENCODED}@x@"]
)
paths = st.one_of(
    st.sampled_from(["", "/", "/0", "/db", "/:memory:", "/%zz", "/mymaster/0", ",h2:1/m"]),
    env_text,
)


@st.composite
def urls(draw: st.DrawFn) -> str:
    return (
        f"{draw(schemes)}://{draw(userinfo)}{draw(hosts)}{draw(ports)}{draw(paths)}"
        if draw(st.booleans())
        else draw(st.one_of(env_text, st.just(f"u:{SECRET}")))
    )


SETTING_NAMES = sorted(Settings.model_fields)
URL_SETTINGS = ["DATABASE_URL", "DATABASE_REPLICA_URLS", "REDIS_URL", "TWS_BASE_URL"]
environments = st.dictionaries(
    st.sampled_from(SETTING_NAMES),
    # Most settings are numbers: lean on number-like text (inf, nan, 1e400 ...).
    st.one_of(numbers, numbers, env_text, st.sampled_from(["true", "no", "DEBUG", "off"])),
    max_size=8,
) | st.fixed_dictionaries({}, optional={name: urls() for name in URL_SETTINGS})


# --- settings -------------------------------------------------------------------------------------


NUMERIC_SETTINGS = sorted(
    name
    for name, info in Settings.model_fields.items()
    if info.annotation in (int, float, int | None, float | None)
)
edge_numbers = st.sampled_from(
    ["inf", "-inf", "nan", "1e400", "1e308", "1e-320", "-0", "0", "9" * 30, "1.5", " 7 "]
)
single_settings = st.one_of(
    st.builds(lambda n, v: {n: v}, st.sampled_from(NUMERIC_SETTINGS), edge_numbers | numbers),
    st.builds(lambda n, v: {n: v}, st.sampled_from(SETTING_NAMES), env_text | urls()),
)


@settings(max_examples=600, deadline=None)
@given(environ=st.one_of(single_settings, environments))
def test_generated_environment_loads_or_names_a_variable_it_set(environ: dict[str, str]) -> None:
    with mock.patch.dict(os.environ, environ, clear=True):
        try:
            loaded = Settings(_env_file=None)  # type: ignore[call-arg]
        except SettingsError as exc:
            assert exc.errors, exc
            named = " ".join(name for name, _ in exc.errors) + str(exc)
            assert any(variable in named for variable in environ), exc
            assert_no_secret(exc)
            return
    # Loaded: every pool it enables can be built (nothing is opened here).
    for _spec, pool in build_pools(loaded):
        assert isinstance(pool, ConnectionPool)


# --- pool configs ---------------------------------------------------------------------------

CONFIG_FIELDS = [f.name for f in fields(ConnectionPoolConfig)]
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=500, deadline=None)
@given(values=st.dictionaries(st.sampled_from(CONFIG_FIELDS), anything, max_size=5))
def test_generated_config_validates_or_names_a_field_it_was_given(values: dict[str, Any]) -> None:
    try:
        config = ConnectionPoolConfig(**values)
    except PoolConfigError as exc:
        assert any(name in str(exc) for name in values), exc
        return
    assert config.max_size >= max(config.min_size, 1)
    with pytest.raises(PoolConfigError, match="unknown"):
        config.replace(no_such_field=1)


# --- pool constructors and initialize() -----------------------------------------------------------

CLOSED_PORT = free_port()
BUILDERS = {
    "database": lambda config, url: DatabaseConnectionPool(config, url),
    "redis": lambda config, url: RedisConnectionPool(config, url),
    "http": lambda config, url: HTTPConnectionPool(config, url),
    # Standalone, Sentinel or Cluster, as REDIS_URL says.
    "redis topology": lambda config, url: create_redis_pool(config, url),
}


def loopback_only(url: str) -> str:
    # initialize() may connect: never let a generated URL reach beyond loopback.
    for host in ("localhost", "[::1]"):
        url = url.replace(f"@{host}", "@127.0.0.1").replace(f"//{host}", "//127.0.0.1")
    # Whole ports only: ":1" must not rewrite the ":1" of ":10" into an invalid port.
    return re.sub(r"127\.0\.0\.1:(6379|1|0)(?!\d)", f"127.0.0.1:{CLOSED_PORT}", url)


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(BUILDERS))
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(url=urls())
async def test_generated_url_gives_only_typed_errors_without_the_password(
    backend: str, url: str
) -> None:
    config = ConnectionPoolConfig(
        pool_name=f"fuzz-{backend}", min_size=1, max_size=1, connection_timeout=0.5
    )
    try:
        pool = BUILDERS[backend](config, url)
    except PoolConfigError as exc:
        assert_no_secret(exc)
        return
    if not any(f"//{host}" in url or f"@{host}" in url for host in ("127.0.0.1", "localhost")):
        return  # only what stays on loopback is opened
    pool = BUILDERS[backend](config, loopback_only(url))
    # A relative SQLite path creates its file in the working directory.
    with tempfile.TemporaryDirectory() as scratch:
        cwd = os.getcwd()
        os.chdir(scratch)
        try:
            await pool.initialize()
        except ResyncError as exc:
            assert_no_secret(exc)
        finally:
            await pool.close(drain_timeout=0)
            os.chdir(cwd)
