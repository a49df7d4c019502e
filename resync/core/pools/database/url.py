"""Database URLs and engine options for the database pool (:mod:`.pool`).

Everything here is pure (no I/O), so a bad URL or option is reported before a
socket is opened:

- :func:`parse_database_url` accepts a ``str``, a pydantic ``SecretStr`` or a
  SQLAlchemy ``URL``; upgrades sync driver names to the async driver the
  project ships (``sqlite`` -> ``sqlite+aiosqlite``, ``postgresql`` /
  ``postgres`` -> ``postgresql+asyncpg``); and says whether the URL names an
  in-memory SQLite database. Its errors never contain the password.
- :func:`engine_arguments` merges the user's engine options with the pool's
  defaults (driver connect timeout, PostgreSQL ``application_name``, SQLite
  busy timeout) and refuses the SQLAlchemy pool options that resync owns.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from resync.core.exceptions import PoolConfigError
from resync.core.pools.kernel.config import ConnectionPoolConfig
from resync.core.redact import mask_url, url_secrets

__all__ = ["DatabaseTarget", "engine_arguments", "parse_database_url", "shared_memory_url"]

# Sync (or legacy) driver names that are upgraded to the async driver resync ships.
_ASYNC_UPGRADES: dict[tuple[str, str], str] = {
    ("postgresql", ""): "postgresql+asyncpg",
    ("postgresql", "psycopg2"): "postgresql+asyncpg",
    ("postgresql", "psycopg2cffi"): "postgresql+asyncpg",
    ("postgresql", "pg8000"): "postgresql+asyncpg",
    ("postgres", ""): "postgresql+asyncpg",
    ("postgres", "asyncpg"): "postgresql+asyncpg",
    ("sqlite", ""): "sqlite+aiosqlite",
    ("sqlite", "pysqlite"): "sqlite+aiosqlite",
}

# SQLAlchemy pool options that would fight the pool resync keeps: each names the
# ConnectionPoolConfig field that does the job instead.
_RESERVED_OPTIONS: dict[str, str] = {
    "poolclass": "resync keeps the connections itself (max_size, min_size)",
    "pool": "resync keeps the connections itself (max_size, min_size)",
    "pool_size": "use ConnectionPoolConfig.max_size / min_size",
    "max_overflow": "use ConnectionPoolConfig.max_size",
    "pool_timeout": "use ConnectionPoolConfig.connection_timeout",
    "pool_recycle": "use ConnectionPoolConfig.max_lifetime",
    "pool_use_lifo": "resync always reuses the most recently returned connection",
}


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """A parsed database URL: what to connect to and how to show it.

    ``url`` is what the engine gets; ``display`` is the user's URL with the
    password masked, for logs, reprs and errors; ``secrets`` are the strings
    to scrub from driver messages.
    """

    url: URL
    display: str
    backend: str
    driver: str
    is_memory: bool
    secrets: tuple[str, ...]


def _raw_text(database_url: object) -> str:
    if hasattr(database_url, "get_secret_value"):
        database_url = database_url.get_secret_value()
    if isinstance(database_url, URL):
        return database_url.render_as_string(hide_password=False)
    if not isinstance(database_url, str):
        raise ValueError(
            f"database_url must be a str, SecretStr or sqlalchemy URL, "
            f"got {type(database_url).__name__}"
        )
    return database_url.strip()


def _is_memory(url: URL) -> bool:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        return True
    return url.query.get("mode") == "memory" or "mode=memory" in database


def parse_database_url(database_url: object) -> DatabaseTarget:
    """Parse and normalise ``database_url``; raise ``ValueError`` if it cannot work.

    The error message shows the URL with its password masked, never the
    password itself.
    """
    text = _raw_text(database_url)
    found = set(url_secrets(text))
    shown = mask_url(text)
    if not text:
        raise ValueError("database_url is empty: give a URL such as sqlite+aiosqlite:///app.db")
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as exc:
        raise ValueError(
            f"cannot parse database_url {shown!r} ({type(exc).__name__}); expected a URL "
            "like postgresql+asyncpg://user@host:5432/dbname or sqlite+aiosqlite:///app.db"
        ) from None
    if url.host and "@" in url.host and url.password is not None:
        # An unencoded "@" in the password: SQLAlchemy splits at the first "@",
        # redis-py, httpx and resync's masking at the last. One rule: the last,
        # so the password is what the user meant and is masked whole.
        extra, _, host = url.host.rpartition("@")
        url = url.set(password=f"{url.password}@{extra}", host=host)
    if url.password:
        found.add(str(url.password))
    backend, _, driver = url.drivername.partition("+")
    upgraded = _ASYNC_UPGRADES.get((backend, driver))
    if upgraded is not None:
        url = url.set(drivername=upgraded)
        backend, _, driver = upgraded.partition("+")
    if backend == "sqlite" and url.host:
        raise ValueError(
            f"database_url {shown!r} names a host; SQLite URLs look like "
            "sqlite+aiosqlite:///path/to/file.db or sqlite+aiosqlite:///:memory:"
        )
    display = url.render_as_string(hide_password=True)
    if backend == "sqlite":  # no password to hide; show ":memory:", not "%3Amemory%3A"
        display = unquote(display)
    return DatabaseTarget(
        url=url,
        display=display,
        backend=backend,
        driver=driver,
        is_memory=backend == "sqlite" and _is_memory(url),
        secrets=tuple(sorted((s for s in found if s), key=len, reverse=True)),
    )


def shared_memory_url(target: DatabaseTarget) -> URL:
    """A uniquely named shared-cache in-memory SQLite URL standing in for ``target``.

    Every connection opened with it reaches the same database, which lives as
    long as one of them stays open (the pool keeps one open for its lifetime).
    """
    query = dict(target.url.query)
    query.update(mode="memory", cache="shared", uri="true")
    return URL.create(
        target.url.drivername, database=f"file:resync-{secrets.token_hex(8)}", query=query
    )


def engine_arguments(
    target: DatabaseTarget,
    config: ConnectionPoolConfig,
    engine_options: Mapping[str, Any],
    application_name: str,
    statement_timeout: float | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``create_async_engine`` (without the pool class).

    ``statement_timeout`` (seconds; None or 0: none) becomes asyncpg's
    ``command_timeout`` unless ``connect_args`` set it.

    Raises :class:`PoolConfigError` for an option resync owns. The user's
    ``connect_args`` win over the defaults added here.
    """
    options = dict(engine_options)
    for key, use_instead in _RESERVED_OPTIONS.items():
        if key in options:
            raise PoolConfigError(
                f"engine option {key!r} is not accepted by pool '{config.pool_name}': "
                f"{use_instead}",
                pool_name=config.pool_name,
            )
    options.pop("pool_pre_ping", None)  # honoured by the pool's own validation
    connect_args = dict(options.pop("connect_args", None) or {})
    if target.driver == "asyncpg":
        # asyncpg's own connect timeout defaults to 60 s; bound it by the pool's.
        connect_args.setdefault("timeout", config.connection_timeout)
        if statement_timeout:
            connect_args.setdefault("command_timeout", statement_timeout)
        server_settings = dict(connect_args.get("server_settings") or {})
        server_settings.setdefault("application_name", application_name)
        connect_args["server_settings"] = server_settings
    elif target.driver == "aiosqlite" and "timeout" not in target.url.query:
        # SQLite's busy timeout: how long a writer waits for the lock.
        connect_args.setdefault("timeout", config.connection_timeout)
    if connect_args:
        options["connect_args"] = connect_args
    return options
