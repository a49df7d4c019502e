"""Validation of the TLS settings (``DB_SSL_*``, ``REDIS_SSL_*``, ``HTTP_VERIFY``).

Kept apart from :mod:`resync.settings` so that module stays a list of
fields. Each rule broken is reported with the names of the variables
involved; the certificates themselves are read when the pools are built
(:mod:`resync.core.pools.manager.tls`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["check_ca_path", "parse_verify", "tls_problems"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_VERIFYING_MODES = ("require", "verify-ca", "verify-full")
_CA_RULE = "must be a CA certificate file (PEM) or a directory of certificates that exists"


def check_ca_path(value: Path | None) -> Path | None:
    """A CA bundle setting: None, or a file or directory that exists."""
    if value is not None and not value.expanduser().exists():
        raise ValueError(_CA_RULE)
    return value.expanduser() if value is not None else None


def parse_verify(value: Any) -> Any:
    """``HTTP_VERIFY`` from text: a boolean word, else an existing CA bundle path."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        return value
    word = value.strip()
    if word.lower() in _TRUE:
        return True
    if word.lower() in _FALSE:
        return False
    path = Path(word).expanduser()
    if not word or not path.exists():
        raise ValueError(
            "must be true, false, or a CA certificate file (PEM) or a directory of "
            "certificates that exists"
        )
    return path


def _database_backend(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).get_backend_name()
    except Exception:  # the URL's own validator reports it
        return ""


def tls_problems(settings: Any) -> list[str]:
    """Every broken rule among the TLS settings of ``settings``, one line each."""
    problems: list[str] = []
    mode = settings.DB_SSL_MODE
    db_files = [
        name
        for name in ("DB_SSL_ROOT_CERT", "DB_SSL_CERT", "DB_SSL_KEY")
        if getattr(settings, name)
    ]
    db_set = (["DB_SSL_MODE"] if mode else []) + db_files
    if db_set and _database_backend(settings.DATABASE_URL) not in ("postgresql", "postgres"):
        problems.append(
            f"{', '.join(db_set)}: TLS settings of PostgreSQL, but DATABASE_URL "
            "is not a postgresql:// URL"
        )
    if db_files and mode not in _VERIFYING_MODES:
        problems.append(
            f"{', '.join(db_files)} need DB_SSL_MODE require, verify-ca or verify-full "
            f"(it is {mode or 'unset'})"
        )
    if bool(settings.DB_SSL_CERT) != bool(settings.DB_SSL_KEY):
        problems.append("DB_SSL_CERT and DB_SSL_KEY go together: set both or neither")

    redis = [
        name
        for name in (
            "REDIS_SSL_CA_CERTS",
            "REDIS_SSL_CERT_REQS",
            "REDIS_SSL_CERTFILE",
            "REDIS_SSL_KEYFILE",
        )
        if getattr(settings, name)
    ]
    if redis:
        url = settings.REDIS_URL or ""
        try:
            scheme = urlsplit(url).scheme
        except ValueError:
            scheme = ""  # REDIS_URL's own validator reports it
        if scheme != "rediss":
            problems.append(f"{', '.join(redis)}: TLS settings, but REDIS_URL is not rediss://")
    if bool(settings.REDIS_SSL_CERTFILE) != bool(settings.REDIS_SSL_KEYFILE):
        problems.append("REDIS_SSL_CERTFILE and REDIS_SSL_KEYFILE go together: set both or neither")
    return problems
