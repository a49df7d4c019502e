"""TLS through settings: PostgreSQL sslmode, rediss:// and the HTTP upstream's certificate.

Every server here is the test's own -- a PostgreSQL cluster with ``ssl=on``,
a TLS-only ``redis-server``, an HTTPS upstream -- presenting a certificate
signed by a CA the test makes; a second CA stands for "somebody else's".
Each test goes the way a deployment does: environment -> ``Settings`` ->
the pool manager.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from resync.core.exceptions import (
    DatabaseSetupError,
    ManagerStartError,
    PoolConfigError,
    SettingsError,
)
from resync.core.pools.pool_manager import ConnectionPoolManager
from resync.settings import Settings
from tests.helpers.pg_cluster import PgCluster, TLSServer
from tests.helpers.redis_server import RedisServer, TLSFiles
from tests.helpers.tls import CertificateAuthority, Issued, issue, make_ca
from tests.helpers.upstream import Upstream

CERT_USER = "certuser"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Our CA, the server and client certificates it signed, and a stranger's CA."""
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca(root / "ca")
    return {
        "ca": ca,
        "server": issue(ca, root / "server", "127.0.0.1", ips=("127.0.0.1",)),
        "client": issue(ca, root / "client", CERT_USER, client=True),
        "other_ca": make_ca(root / "other", "somebody else's CA"),
        "stranger": issue(make_ca(root / "rogue", "rogue CA"), root / "rogue-client", CERT_USER),
    }


def settings(**values: Any) -> Settings:
    values.setdefault("DB_POOL_MIN_SIZE", 1)
    values.setdefault("DB_POOL_CONNECT_TIMEOUT", 5)
    values.setdefault("DB_POOL_HEALTH_CHECK_INTERVAL", 0)
    values.setdefault("REDIS_POOL_HEALTH_CHECK_INTERVAL", 0)
    values.setdefault("HTTP_POOL_HEALTH_CHECK_INTERVAL", 0)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cluster(pki: dict[str, Any]) -> Iterator[PgCluster]:
    """PostgreSQL with ssl=on; ``certuser`` may log in only with a client certificate."""
    server: Issued = pki["server"]
    tls = TLSServer(server.cert, server.key, client_ca=pki["ca"].cert)
    hba = (f"hostssl all {CERT_USER} 127.0.0.1/32 cert", f"host all {CERT_USER} 0.0.0.0/0 reject")
    with PgCluster(tls=tls, hba=hba) as cluster:
        yield cluster


async def uses_tls(values: dict[str, Any]) -> bool:
    """Open the manager from these settings; does its database connection use TLS?"""
    query = text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    manager = ConnectionPoolManager(settings(**values), check_budget_on_start=False)
    async with manager, manager.pool("database").get_connection() as session:
        return bool((await session.execute(query)).scalar_one())


@pytest.mark.slow
async def test_verify_full_against_our_ca_connects_over_tls(
    tls_cluster: PgCluster, pki: dict[str, Any]
) -> None:
    values = {
        "DATABASE_URL": tls_cluster.url(),
        "DB_SSL_MODE": "verify-full",
        "DB_SSL_ROOT_CERT": str(pki["ca"].cert),
    }
    assert await uses_tls(values) is True


@pytest.mark.slow
async def test_certificate_from_another_ca_is_refused_with_a_typed_error(
    tls_cluster: PgCluster, pki: dict[str, Any]
) -> None:
    values = settings(
        DATABASE_URL=tls_cluster.url(),
        DB_SSL_MODE="verify-ca",
        DB_SSL_ROOT_CERT=str(pki["other_ca"].cert),
    )
    manager = ConnectionPoolManager(values, check_budget_on_start=False)
    with pytest.raises(ManagerStartError, match="pool 'database'") as caught:
        await manager.initialize()
    setup_error = caught.value.__cause__
    assert isinstance(setup_error, DatabaseSetupError)
    assert "certificate verify failed" in str(setup_error)
    chain = setup_error.__cause__.__cause__  # type: ignore[union-attr]
    assert isinstance(chain, ssl.SSLCertVerificationError)
    await manager.close_all()


@pytest.mark.slow
async def test_verify_full_checks_the_host_name_verify_ca_does_not(
    tls_cluster: PgCluster, pki: dict[str, Any]
) -> None:
    # The certificate names IP 127.0.0.1 only; "localhost" is the same server by another name.
    by_name = tls_cluster.url().replace("@127.0.0.1:", "@localhost:")
    ca = str(pki["ca"].cert)
    full = {"DATABASE_URL": by_name, "DB_SSL_MODE": "verify-full", "DB_SSL_ROOT_CERT": ca}
    with pytest.raises(ManagerStartError, match="certificate verify failed"):
        await uses_tls(full)
    assert await uses_tls({**full, "DB_SSL_MODE": "verify-ca"}) is True


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "encrypted"), [("require", True), ("disable", False)])
async def test_require_encrypts_without_checking_and_disable_does_not_encrypt(
    tls_cluster: PgCluster, mode: str, encrypted: bool
) -> None:
    assert await uses_tls({"DATABASE_URL": tls_cluster.url(), "DB_SSL_MODE": mode}) is encrypted


@pytest.mark.slow
async def test_client_certificate_logs_in_where_the_server_demands_one(
    tls_cluster: PgCluster, pki: dict[str, Any]
) -> None:
    admin = await asyncpg.connect(host="127.0.0.1", port=tls_cluster.port, user="postgres")
    try:
        await admin.execute(f"DROP ROLE IF EXISTS {CERT_USER}; CREATE ROLE {CERT_USER} LOGIN")
    finally:
        await admin.close()
    client: Issued = pki["client"]
    values = {
        "DATABASE_URL": tls_cluster.url(user=CERT_USER),
        "DB_SSL_MODE": "verify-full",
        "DB_SSL_ROOT_CERT": str(pki["ca"].cert),
    }
    with pytest.raises(ManagerStartError, match="pool 'database'"):
        await uses_tls(values)  # no client certificate: refused by pg_hba
    values.update(DB_SSL_CERT=str(client.cert), DB_SSL_KEY=str(client.key))
    assert await uses_tls(values) is True
    stranger: Issued = pki["stranger"]
    values.update(DB_SSL_CERT=str(stranger.cert), DB_SSL_KEY=str(stranger.key))
    with pytest.raises(ManagerStartError, match="pool 'database'"):
        await uses_tls(values)  # a certificate our server's CA never signed


# --- the settings themselves --------------------------------------------------------------------


def test_tls_settings_are_validated_naming_the_variables(tmp_path: Path) -> None:
    pg = "postgresql+asyncpg://u@127.0.0.1/db"
    cert = tmp_path / "some.pem"
    cert.write_text("not a certificate\n")
    cases: dict[str, dict[str, Any]] = {
        "DB_SSL_MODE": {"DATABASE_URL": pg, "DB_SSL_MODE": "verify-everything"},
        "DB_SSL_ROOT_CERT": {
            "DATABASE_URL": pg,
            "DB_SSL_MODE": "verify-ca",
            "DB_SSL_ROOT_CERT": "/no/such.pem",
        },
        "DB_SSL_KEY": {"DATABASE_URL": pg, "DB_SSL_MODE": "require", "DB_SSL_CERT": str(cert)},
        "DATABASE_URL": {"DB_SSL_MODE": "verify-full"},  # the SQLite default has no TLS
        "HTTP_VERIFY": {"HTTP_VERIFY": "sometimes"},
        "REDIS_SSL_CA_CERTS": {"REDIS_URL": "redis://127.0.0.1/0", "REDIS_SSL_CA_CERTS": str(cert)},
        "REDIS_SSL_CERT_REQS": {
            "REDIS_URL": "rediss://127.0.0.1/0",
            "REDIS_SSL_CERT_REQS": "maybe",
        },
    }
    for variable, values in cases.items():
        with pytest.raises(SettingsError, match=variable):
            settings(**values)
    assert settings(HTTP_VERIFY="off").HTTP_VERIFY is False
    bundle_dir = settings(HTTP_VERIFY=str(tmp_path)).HTTP_VERIFY
    assert bundle_dir == tmp_path


async def test_a_file_that_is_no_certificate_fails_the_start_naming_the_variable(
    tmp_path: Path,
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    values = settings(
        DATABASE_URL="postgresql+asyncpg://u@127.0.0.1:1/db",
        DB_SSL_MODE="verify-full",
        DB_SSL_ROOT_CERT=str(junk),
    )
    with pytest.raises(PoolConfigError, match="DB_SSL_ROOT_CERT"):
        await ConnectionPoolManager(values).initialize()


# --- Redis over TLS ------------------------------------------------------------------------------


@pytest.fixture
def tls_redis(tmp_path: Path, pki: dict[str, Any]) -> Iterator[RedisServer]:
    server: Issued = pki["server"]
    tls = TLSFiles(cert=server.cert, key=server.key)
    with RedisServer(tmp_path, tls=tls) as redis:
        yield redis


async def redis_answers(values: dict[str, Any]) -> bool:
    manager = ConnectionPoolManager(settings(**values), check_budget_on_start=False)
    async with manager, manager.pool("redis").get_connection() as client:
        return bool(await client.ping())


@pytest.mark.redis
async def test_rediss_url_with_our_ca_from_settings(
    tls_redis: RedisServer, pki: dict[str, Any]
) -> None:
    url = tls_redis.url(db=0)
    assert url.startswith("rediss://")
    ours: CertificateAuthority = pki["ca"]
    assert await redis_answers({"REDIS_URL": url, "REDIS_SSL_CA_CERTS": str(ours.cert)})
    other: CertificateAuthority = pki["other_ca"]
    with pytest.raises(ManagerStartError, match="pool 'redis'"):
        await redis_answers(
            {"REDIS_URL": url, "REDIS_SSL_CA_CERTS": str(other.cert), "REDIS_REQUIRED": True}
        )
    # Not checking the certificate at all is possible, and explicit.
    assert await redis_answers({"REDIS_URL": url, "REDIS_SSL_CERT_REQS": "none"})


# --- HTTP upstream over TLS ---------------------------------------------------------------------


@pytest.fixture
def https_upstream(pki: dict[str, Any]) -> Iterator[Upstream]:
    server: Issued = pki["server"]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server.cert, server.key)
    with Upstream(tls=context) as upstream:
        yield upstream


async def upstream_answers(values: dict[str, Any]) -> int:
    manager = ConnectionPoolManager(settings(**values), check_budget_on_start=False)
    async with manager, manager.pool("tws_http").get_connection() as client:
        return (await client.get("/ok")).status_code


async def test_http_verify_with_our_ca_true_and_false(
    https_upstream: Upstream, pki: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    url = https_upstream.url
    assert url.startswith("https://")
    assert await upstream_answers({"TWS_BASE_URL": url, "HTTP_VERIFY": str(pki["ca"].cert)}) == 200
    with pytest.raises(ManagerStartError, match="pool 'tws_http'") as caught:
        await upstream_answers(  # system CAs
            {"TWS_BASE_URL": url, "HTTP_VERIFY": "true", "HTTP_REQUIRED": True}
        )
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    caplog.set_level(logging.WARNING, logger="resync.manager")
    assert await upstream_answers({"TWS_BASE_URL": url, "HTTP_VERIFY": "false"}) == 200
    assert any("certificate is NOT checked" in r.getMessage() for r in caplog.records)
