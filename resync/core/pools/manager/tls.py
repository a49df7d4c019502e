"""TLS options from settings, turned into what each driver takes.

- PostgreSQL (asyncpg): ``DB_SSL_MODE`` with libpq's names, ``DB_SSL_ROOT_CERT``
  and an optional client certificate (``DB_SSL_CERT`` + ``DB_SSL_KEY``) become
  asyncpg's ``ssl`` connect argument -- an ``ssl.SSLContext`` built here, or
  asyncpg's own ``"allow"`` / ``"prefer"`` modes, or ``False``.
- Redis (redis-py, ``rediss://``): ``REDIS_SSL_CA_CERTS``,
  ``REDIS_SSL_CERT_REQS``, ``REDIS_SSL_CERTFILE`` / ``REDIS_SSL_KEYFILE``
  become redis-py's ``ssl_*`` client options.
- HTTP (httpx): ``HTTP_VERIFY`` -- true, false or a CA bundle (file or
  directory) -- becomes the transport's ``verify`` (an ``ssl.SSLContext`` for
  a bundle: httpx deprecates a path there).

The PostgreSQL modes, as in libpq:

=============  ===============================================================
mode           what the client checks
=============  ===============================================================
disable        no TLS
allow, prefer  TLS if the server offers it (asyncpg's modes), nothing checked
require        TLS, server certificate not checked -- unless a root
               certificate is given, then as verify-ca (libpq does the same)
verify-ca      TLS, certificate signed by the root certificate (or the
               system's CAs)
verify-full    verify-ca plus the host name (or IP) of the URL is in it
=============  ===============================================================

Files are read when the pool is built, so a missing or broken certificate is
a :class:`~resync.core.exceptions.PoolConfigError` at start that names the
setting, never a failure at the first connection.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

from resync.core.exceptions import PoolConfigError

__all__ = [
    "DB_SSL_MODES",
    "database_tls_options",
    "http_tls_options",
    "http_verify",
    "postgres_ssl",
    "redis_ssl_options",
    "redis_tls_options",
]

logger = logging.getLogger("resync.manager")

DB_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _load_verify(context: ssl.SSLContext, bundle: Path, setting: str) -> None:
    try:
        if bundle.is_dir():
            context.load_verify_locations(capath=str(bundle))
        else:
            context.load_verify_locations(cafile=str(bundle))
    except (OSError, ssl.SSLError) as exc:
        raise PoolConfigError(
            f"{setting}: cannot load CA certificates from {bundle}: {exc}"
        ) from None


def _load_client_cert(context: ssl.SSLContext, cert: Path, key: Path, setting: str) -> None:
    try:
        # An empty password instead of None: OpenSSL would otherwise prompt on the
        # terminal for the passphrase of an encrypted key, hanging a server.
        context.load_cert_chain(str(cert), str(key), password=b"")
    except (OSError, ssl.SSLError) as exc:
        raise PoolConfigError(
            f"{setting}: cannot load the client certificate {cert} with key {key} "
            f"(it must match the certificate and not be encrypted): {exc}"
        ) from None


def postgres_ssl(
    mode: str | None,
    root_cert: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
) -> ssl.SSLContext | str | bool | None:
    """asyncpg's ``ssl`` argument for ``DB_SSL_MODE`` and its files; None: not set."""
    if mode is None:
        return None
    if mode not in DB_SSL_MODES:
        raise PoolConfigError(f"DB_SSL_MODE must be one of {', '.join(DB_SSL_MODES)}, got {mode!r}")
    if mode == "disable":
        return False
    if mode in ("allow", "prefer"):
        return mode
    if mode == "require" and root_cert is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies; checks the host name
        if root_cert is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            # Only the given CA: a private CA must not be joined by every public one.
            _load_verify(context, root_cert, "DB_SSL_ROOT_CERT")
        context.check_hostname = mode == "verify-full"
    if cert is not None and key is not None:
        _load_client_cert(context, cert, key, "DB_SSL_CERT/DB_SSL_KEY")
    return context


def redis_ssl_options(
    ca_certs: Path | None = None,
    cert_reqs: str | None = None,
    certfile: Path | None = None,
    keyfile: Path | None = None,
) -> dict[str, Any]:
    """redis-py client options for a ``rediss://`` URL (only the ones set)."""
    options: dict[str, Any] = {}
    if ca_certs is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _load_verify(context, ca_certs, "REDIS_SSL_CA_CERTS")  # fail at start, not at connect
        options["ssl_ca_certs" if ca_certs.is_file() else "ssl_ca_path"] = str(ca_certs)
    if cert_reqs is not None:
        options["ssl_cert_reqs"] = cert_reqs
    if certfile is not None and keyfile is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _load_client_cert(context, certfile, keyfile, "REDIS_SSL_CERTFILE/REDIS_SSL_KEYFILE")
        options["ssl_certfile"] = str(certfile)
        options["ssl_keyfile"] = str(keyfile)
    return options


def http_verify(verify: bool | Path, pool_name: str) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for ``HTTP_VERIFY``: a context for a CA bundle, else the bool."""
    if verify is False:
        logger.warning(
            "pool '%s': HTTP_VERIFY=false -- the upstream's TLS certificate is NOT checked",
            pool_name,
        )
        return False
    if verify is True:
        return True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks the host name
    _load_verify(context, verify, "HTTP_VERIFY")
    return context


# --- from settings ------------------------------------------------------------------


def _path(source: object, name: str) -> Path | None:
    value = getattr(source, name, None)
    if isinstance(value, str | Path) and str(value).strip():
        return Path(value)
    return None


def database_tls_options(source: object) -> dict[str, Any]:
    """Engine options of the database pool for ``DB_SSL_*`` (empty when unset)."""
    mode = getattr(source, "DB_SSL_MODE", None)
    ssl_arg = postgres_ssl(
        mode if isinstance(mode, str) else None,
        _path(source, "DB_SSL_ROOT_CERT"),
        _path(source, "DB_SSL_CERT"),
        _path(source, "DB_SSL_KEY"),
    )
    return {} if ssl_arg is None else {"connect_args": {"ssl": ssl_arg}}


def redis_tls_options(source: object) -> dict[str, Any]:
    """Client options of the Redis pool for ``REDIS_SSL_*`` (empty when unset)."""
    reqs = getattr(source, "REDIS_SSL_CERT_REQS", None)
    return redis_ssl_options(
        _path(source, "REDIS_SSL_CA_CERTS"),
        reqs if isinstance(reqs, str) else None,
        _path(source, "REDIS_SSL_CERTFILE"),
        _path(source, "REDIS_SSL_KEYFILE"),
    )


def http_tls_options(source: object, pool_name: str) -> dict[str, Any]:
    """Client options of the HTTP pool for ``HTTP_VERIFY`` (empty for the default, true)."""
    verify = getattr(source, "HTTP_VERIFY", True)
    if isinstance(verify, str):
        verify = Path(verify)
    if verify is True or not isinstance(verify, bool | Path):
        return {}
    return {"verify": http_verify(verify, pool_name)}
