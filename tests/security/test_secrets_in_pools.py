"""The password in a URL never shows: pools and the manager, working and failing.

Each scenario runs with every logger at DEBUG and records every log record,
every error (text, repr, formatted traceback with its causes) and the reprs,
stats and health reports along the way; then no surface may show the
password in any form (see :mod:`tests.security.exposure`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from resync.core.exceptions import (
    DatabaseError,
    HTTPUnavailableError,
    ManagerStartError,
    PoolSetupError,
    RedisPoolError,
    TWSConnectionError,
)
from resync.core.pools.base_pool import ConnectionPool, ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.pools.manager.specs import pool_specs
from resync.core.pools.pool_manager import ConnectionPoolManager
from resync.core.pools.redis_pool import RedisConnectionPool
from tests.helpers.net import free_port
from tests.helpers.pg_cluster import PgCluster
from tests.helpers.redis_server import RedisServer
from tests.helpers.upstream import Upstream
from tests.security.conftest import make_settings, pg_url_with, redis_url_with
from tests.security.exposure import Exposure, Sentinel

pytestmark = [pytest.mark.postgres]


def config(name: str, **overrides: Any) -> ConnectionPoolConfig:
    values: dict[str, Any] = {
        "pool_name": name,
        "min_size": 1,
        "max_size": 2,
        "connection_timeout": 2.0,
        "health_check_interval": 0,
        "drain_timeout": 1.0,
    }
    values.update(overrides)
    return ConnectionPoolConfig(**values)


def record_pool(exposure: Exposure, pool: ConnectionPool[Any]) -> None:
    exposure.add_repr(f"pool {pool.name}", pool)
    exposure.add(f"pool {pool.name}: stats", pool.get_stats_snapshot())


@pytest.fixture
def tarpit() -> Iterator[int]:
    """A port that completes TCP handshakes and then never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


@pytest.fixture
async def opened() -> AsyncIterator[list[ConnectionPool[Any]]]:
    """Pools a test opens; every one is closed afterwards."""
    pools: list[ConnectionPool[Any]] = []
    yield pools
    for pool in pools:
        await pool.close(drain_timeout=0)


# --- working pools ----------------------------------------------------------------------------


async def test_start_lease_check_and_stop_every_pool(
    urls: dict[str, str], secret: Sentinel, tarpit: int, exposure: Exposure
) -> None:
    # A read replica too: the shared server once more, and one that refuses.
    refused = unreachable(secret, tarpit)["refused"]["database"]
    replicas = f"{urls['DATABASE_URL']},{refused}"
    settings = make_settings({**urls, "DATABASE_REPLICA_URLS": replicas})
    exposure.add_repr("settings", settings)
    exposure.add("settings.masked()", settings.masked())
    for spec in pool_specs(settings):
        exposure.add_repr(f"pool spec {spec.name}", spec)
    manager = ConnectionPoolManager(settings)
    exposure.add_repr("manager (new)", manager)
    async with manager:
        exposure.add_repr("manager (ready)", manager)
        async with manager.pool("database").get_connection() as session:
            assert (await session.execute(text("SELECT 41 + 1"))).scalar() == 42
            exposure.add_repr("session", session)
            exposure.add_repr("engine", session.get_bind())
        for _ in range(3):  # the refused replica is taken out, reads go on
            async with manager.pool("database").get_read_session() as session:  # type: ignore[attr-defined]
                assert (await session.execute(text("SELECT 1"))).scalar() == 1
        async with manager.pool("redis").get_connection() as client:
            await client.set("resync:security", "value")
            assert await client.get("resync:security") == "value"
            exposure.add_repr("redis client", client)
        async with manager.pool("tws_http").get_connection() as http:
            assert (await http.post("/echo", content=b"hello")).text == "POST hello"
            exposure.add_repr("http client base_url", http.base_url)
        assert await manager.health_check_all() == {
            "database": True,
            "redis": True,
            "tws_http": True,
        }
        for pool in manager.pools.values():
            record_pool(exposure, pool)
        exposure.add("manager stats", manager.get_pool_stats())
        exposure.add("readiness", manager.readiness())
        exposure.add("redis pool info", await manager.pool("redis").get_pool_info())  # type: ignore[attr-defined]
        exposure.add("http pool stats", await manager.pool("tws_http").get_pool_stats())  # type: ignore[attr-defined]
        exposure.add("budget", [repr(line) for line in manager.budget])
    exposure.add_repr("manager (closed)", manager)
    exposure.assert_clean(at_least=40)


# --- failing requests ---------------------------------------------------------------------


async def test_sql_errors(urls: dict[str, str], exposure: Exposure, opened: list[Any]) -> None:
    pool = DatabaseConnectionPool(config("sql"), urls["DATABASE_URL"])
    opened.append(pool)
    await pool.initialize()
    for name, sql in {
        "division by zero": "SELECT 1/0",
        "syntax error": "SELEKT 1",
        "missing table": "SELECT * FROM no_such_table_resync",
        "statement timeout": "SET LOCAL statement_timeout = 1; SELECT pg_sleep(1)",
    }.items():
        with exposure.expect_error(name) as caught:
            async with pool.get_connection() as session:
                for statement in sql.split("; "):
                    await session.execute(text(statement))
        assert isinstance(caught[0], DatabaseError)
    record_pool(exposure, pool)
    exposure.assert_clean()


async def test_redis_errors_and_a_server_that_goes_away(
    urls: dict[str, str], redis_server: RedisServer, exposure: Exposure, opened: list[Any]
) -> None:
    pool = RedisConnectionPool(config("redis-errors"), urls["REDIS_URL"])
    opened.append(pool)
    await pool.initialize()
    with exposure.expect_error("WRONGTYPE") as caught:
        async with pool.get_connection() as client:
            await client.set("resync:str", "x")
            await client.lpush("resync:str", "y")
    with exposure.expect_error("unknown command"):
        async with pool.get_connection() as client:
            await client.execute_command("NO-SUCH-COMMAND", "arg")
    redis_server.stop()
    with exposure.expect_error("server stopped"):
        async with pool.get_connection() as client:
            await client.ping()
    exposure.add("health while down", repr(await pool.check_health()))
    redis_server.start()
    async with pool.get_connection() as client:
        assert await client.ping() is True
    assert isinstance(caught[0], RedisPoolError)
    record_pool(exposure, pool)
    exposure.assert_clean()


async def test_http_errors_timeouts_and_an_upstream_that_goes_away(
    urls: dict[str, str], upstream: Upstream, exposure: Exposure, opened: list[Any]
) -> None:
    pool = HTTPConnectionPool(config("http-errors", connection_timeout=0.5), urls["TWS_BASE_URL"])
    opened.append(pool)
    await pool.initialize()
    with exposure.expect_error("500") as caught:
        async with pool.get_connection() as client:
            (await client.get("/fail")).raise_for_status()
    with exposure.expect_error("read timeout"):
        async with pool.get_connection() as client:
            await client.get("/hang")
    with exposure.expect_error("dropped connection"):
        async with pool.get_connection() as client:
            await client.get("/drop")
    upstream.stop()
    for attempt in range(8):  # refused until the breaker opens and fails fast
        with exposure.expect_error(f"refused {attempt}") as refused:
            async with pool.get_connection() as client:
                await client.get("/ok")
        if isinstance(refused[0], HTTPUnavailableError):
            break
    assert isinstance(refused[0], HTTPUnavailableError)
    exposure.add("health while down", repr(await pool.check_health()))
    assert all(isinstance(e, TWSConnectionError) for e in caught)
    record_pool(exposure, pool)
    exposure.assert_clean()


# --- servers that cannot be reached -------------------------------------------------------------


def unreachable(secret: Sentinel, tarpit: int) -> dict[str, dict[str, str]]:
    """For each backend: a bad host, a refused port and a server that never answers."""
    closed = free_port()
    hosts = {
        "bad host": "nonexistent-host.invalid:5432",
        "refused": f"127.0.0.1:{closed}",
        "no answer": f"127.0.0.1:{tarpit}",
    }
    pw, user = secret.encoded, secret.http_user
    return {
        kind: {
            "database": f"postgresql+asyncpg://postgres:{pw}@{host}/test",
            "redis": f"redis://:{pw}@{host}/0",
            "http": f"http://{user}:{pw}@{host}",
        }
        for kind, host in hosts.items()
    }


def build(backend: str, name: str, url: str) -> ConnectionPool[Any]:
    cfg = config(name, connection_timeout=0.5)
    if backend == "database":
        return DatabaseConnectionPool(cfg, url)
    if backend == "redis":
        return RedisConnectionPool(cfg, url)
    return HTTPConnectionPool(cfg, url)


async def test_bad_host_refused_and_silent_servers_fail_typed_without_the_password(
    secret: Sentinel, tarpit: int, exposure: Exposure, opened: list[Any]
) -> None:
    for kind, by_backend in unreachable(secret, tarpit).items():
        for backend, url in by_backend.items():
            pool = build(backend, f"{backend}-{kind.replace(' ', '-')}", url)
            opened.append(pool)
            exposure.add_repr(f"{kind} {backend} pool (new)", pool)
            with exposure.expect_error(f"{kind} {backend}") as caught:
                await pool.initialize()
            assert isinstance(caught[0], PoolSetupError), caught[0]
            record_pool(exposure, pool)
    exposure.assert_clean(at_least=50)


async def test_manager_start_failure_names_the_pool_not_the_password(
    urls: dict[str, str],
    secret: Sentinel,
    redis_server: RedisServer,
    tarpit: int,
    exposure: Exposure,
) -> None:
    wrong_password = {
        **urls,
        "REDIS_URL": redis_url_with(redis_server, secret, "-wrong"),
        "REDIS_REQUIRED": "true",
    }
    no_database = {
        **urls,
        "DATABASE_URL": unreachable(secret, tarpit)["refused"]["database"],
    }
    for name, values in {"wrong Redis password": wrong_password, "refused": no_database}.items():
        manager = ConnectionPoolManager(make_settings(values))
        with exposure.expect_error(name) as caught:
            await manager.initialize()
        assert isinstance(caught[0], ManagerStartError)
        exposure.add(f"{name}: failures", caught[0].failures)  # type: ignore[attr-defined]
        exposure.add_repr(f"{name}: manager", manager)
        await manager.close_all()
    exposure.assert_clean()


# --- a server that checks the password ------------------------------------------------------------


@pytest.fixture(scope="module")
def password_cluster(secret: Sentinel) -> Iterator[PgCluster]:
    """A throwaway PostgreSQL whose postgres role has the sentinel password (scram)."""
    with PgCluster(password=secret.password) as cluster:
        yield cluster


@pytest.mark.slow
async def test_postgres_checks_the_password_and_a_wrong_one_is_never_shown(
    password_cluster: PgCluster, secret: Sentinel, exposure: Exposure, opened: list[Any]
) -> None:
    right = DatabaseConnectionPool(config("pg-auth"), password_cluster.url())
    opened.append(right)
    await right.initialize()
    async with right.get_connection() as session:
        assert (await session.execute(text("SELECT current_user"))).scalar() == "postgres"
    record_pool(exposure, right)
    wrong_url = password_cluster.url(password=secret.password + "-wrong")
    wrong = DatabaseConnectionPool(config("pg-wrong"), wrong_url)
    opened.append(wrong)
    with exposure.expect_error("wrong password") as caught:
        await wrong.initialize()
    assert "password authentication failed" in str(caught[0])
    record_pool(exposure, wrong)
    exposure.assert_clean()


async def test_pool_urls_given_as_secret_objects(
    pg_url: str, secret: Sentinel, exposure: Exposure, opened: list[Any]
) -> None:
    from pydantic import SecretStr
    from sqlalchemy.engine import make_url

    url = pg_url_with(pg_url, secret.password)
    for name, value in {"SecretStr": SecretStr(url), "sqlalchemy URL": make_url(url)}.items():
        pool = DatabaseConnectionPool(config(f"pg-{name}"), value)
        opened.append(pool)
        await pool.initialize()
        async with pool.get_connection() as session:
            await session.execute(text("SELECT 1"))
        record_pool(exposure, pool)
    exposure.assert_clean()
    await asyncio.sleep(0)


RAW_AT = Sentinel("Zq7Sentinel@Tail9x")


async def test_unencoded_at_sign_in_a_password_is_masked_whole(
    pg_url: str, upstream: Upstream, tmp_path: Any
) -> None:
    # redis-py and httpx split the userinfo at the LAST "@", so these URLs
    # work as written; every display must then hide the password up to there.
    # (SQLAlchemy splits at the first "@": a database URL needs it encoded.)
    exposure = Exposure(RAW_AT)
    with RedisServer(tmp_path, password=RAW_AT.password) as server, exposure.debug_logs():
        urls = {
            "DATABASE_URL": pg_url,
            "REDIS_URL": f"redis://:{RAW_AT.password}@127.0.0.1:{server.port}/0",
            "TWS_BASE_URL": f"http://api:{RAW_AT.password}@127.0.0.1:{upstream.port}",
        }
        settings = make_settings(urls)
        exposure.add_repr("settings", settings)
        exposure.add("settings.masked()", settings.masked())
        async with ConnectionPoolManager(settings) as manager:
            async with manager.pool("redis").get_connection() as client:
                assert await client.ping() is True
            async with manager.pool("tws_http").get_connection() as http:
                assert (await http.get("/ok")).status_code == 200
            server.stop()
            with exposure.expect_error("redis down"):
                async with manager.pool("redis").get_connection() as client:
                    await client.ping()
            await manager.health_check_all()
            for pool in manager.pools.values():
                record_pool(exposure, pool)
            exposure.add("manager stats", manager.get_pool_stats())
            server.start()
    exposure.assert_clean(at_least=10)


async def test_one_masking_rule_for_a_database_password_with_an_unencoded_at_or_hash(
    pg_url: str,
) -> None:
    """Issue 15.6: repr, url, setup error and its chain hide "Head@Tail" and "pa#ss" whole."""
    from sqlalchemy.engine import make_url

    from resync.core.pools.base_pool import ConnectionPoolConfig
    from resync.core.pools.db_pool import DatabaseConnectionPool

    real = make_url(pg_url)
    for password in ("Zq7Head@Tail9x", "Zq7pa#ss9xyz"):
        exposure = Exposure(Sentinel(password))
        with exposure.debug_logs():
            url = f"postgresql+asyncpg://nobody:{password}@{real.host}:{real.port}/{real.database}"
            config = ConnectionPoolConfig(pool_name="masked", connection_timeout=2, min_size=1)
            pool = DatabaseConnectionPool(config, url)
            record_pool(exposure, pool)
            exposure.add("pool.url", pool.url)
            assert pool.url.startswith(f"postgresql+asyncpg://nobody:***@{real.host}:")
            with exposure.expect_error(f"setup with {password!r}"):
                await pool.initialize()  # the role does not exist: the server refuses
            await pool.close()
        exposure.assert_clean()


async def test_an_http_error_chain_carries_no_token_from_the_url_or_headers(
    upstream: Upstream,
) -> None:
    """Issue 15.6: the httpx error's request (URL ?token=, Authorization) is not in the chain."""
    import traceback

    from resync.core.exceptions import TWSConnectionError
    from resync.core.pools.base_pool import ConnectionPoolConfig
    from resync.core.pools.http_pool import HTTPConnectionPool

    token = "Zq7TokenSentinel42"
    config = ConnectionPoolConfig(pool_name="api", connection_timeout=1, min_size=0)
    pool = HTTPConnectionPool(
        config,
        f"http://127.0.0.1:{upstream.port}/base?token={token}",
        headers={"Authorization": f"Bearer {token}"},
    )
    async with pool:
        with pytest.raises(TWSConnectionError) as caught:
            async with pool.get_connection() as client:
                response = await client.get("/status/503")
                response.raise_for_status()
    seen: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    assert seen == [caught.value], [type(e).__name__ for e in seen]
    text = "".join(traceback.format_exception(caught.value)) + repr(vars(caught.value))
    assert token not in text
