"""Build the pools that settings enable.

- ``database``: always (embedded SQLite by default), with its PgBouncer mode
  (``DB_POOL_PGBOUNCER``) and read replicas (``DATABASE_REPLICA_URLS``);
- ``redis``: when ``REDIS_URL`` is set and ``REDIS_POOL_MIN_SIZE`` > 0;
- ``tws_http``: when ``TWS_BASE_URL`` is set.

Every pool gets its backend's circuit breaker settings (``DB_BREAKER_*``,
``REDIS_BREAKER_*``, ``HTTP_BREAKER_*``; a ``POOLS`` entry those of its
backend): ``*_BREAKER_ENABLED=false`` builds it without one.

Settings are read through :func:`read_setting`, which falls back to the
default when a value has the wrong type, so a partial stand-in for
``Settings`` (a test double that sets only a few fields) still builds pools.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from resync.core.pools.kernel.pool import ConnectionPool, ConnectionPoolConfig
from resync.core.pools.manager.tls import database_tls_options, http_tls_options, redis_tls_options
from resync.core.redact import mask_url
from resync.core.resilience import BACKEND_BREAKER_DEFAULTS, BreakerSpec, CircuitBreakerConfig
from resync.core.retry_budget import RetryBudget

__all__ = [
    "DATABASE_POOL",
    "HTTP_POOL",
    "REDIS_POOL",
    "PoolSpec",
    "breaker_config",
    "build_pools",
    "pool_specs",
    "read_setting",
]

logger = logging.getLogger("resync.manager")

DATABASE_POOL = "database"
REDIS_POOL = "redis"
HTTP_POOL = "tws_http"

_DEFAULTS: dict[str, dict[str, Any]] = {
    "DB": {"MIN_SIZE": 2, "MAX_SIZE": 10, "CONNECT_TIMEOUT": 10.0},
    "REDIS": {"MIN_SIZE": 1, "MAX_SIZE": 10, "CONNECT_TIMEOUT": 5.0},
    "HTTP": {"MIN_SIZE": 1, "MAX_SIZE": 20, "CONNECT_TIMEOUT": 10.0},
}
_PREFIX = {"database": "DB", "redis": "REDIS", "http": "HTTP"}
_COMMON = {
    "IDLE_TIMEOUT": 300.0,
    "HEALTH_CHECK_INTERVAL": 30.0,
    "MAX_LIFETIME": 1800.0,
    "MAX_WAITING": 0,
    "LEAK_DETECTION_THRESHOLD": 0.0,
    "QUEUE_TARGET": 0.0,
    "QUEUE_INTERVAL": 0.0,
    "ADAPTIVE_LIMIT": False,
}


def read_setting(source: object, name: str, default: Any) -> Any:
    """``source.name`` if it has the type of ``default`` (numbers interchange), else ``default``."""
    value = getattr(source, name, default)
    if default is None:
        return value if isinstance(value, str) and value.strip() else None
    if isinstance(default, bool):
        return value if isinstance(value, bool) else default
    if isinstance(default, int | float) and not isinstance(default, bool):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        return default
    return value if isinstance(value, type(default)) else default


def _secret_text(value: object) -> str | None:
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    return value if isinstance(value, str) and value.strip() else None


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """What to build: a pool name, its backend, config, target URL and options.

    ``breaker`` is the pool's ``circuit_breaker`` argument: a config from the
    backend's ``*_BREAKER_*`` settings, ``False`` when disabled, ``True`` (the
    backend's defaults) for a spec made by hand.
    """

    name: str
    backend: str
    config: ConnectionPoolConfig
    url: str
    required: bool
    options: dict[str, Any]
    breaker: BreakerSpec = True

    def __repr__(self) -> str:
        # The URL may carry a password and the options a key or a client
        # certificate: show the URL masked and only the names of the options.
        return (
            f"PoolSpec(name={self.name!r}, backend={self.backend!r}, "
            f"url={mask_url(self.url)!r}, required={self.required!r}, "
            f"options={sorted(self.options)!r}, breaker={self.breaker!r}, "
            f"config={self.config!r})"
        )


def breaker_config(source: object, backend: str) -> CircuitBreakerConfig | bool:
    """The circuit breaker ``source`` asks for a pool of ``backend``
    (``database``, ``redis``, ``http``): ``False`` with ``<PREFIX>_BREAKER_ENABLED``
    off, else a config of its ``FAILURE_THRESHOLD`` and ``RECOVERY_TIMEOUT``."""
    prefix = _PREFIX[backend]
    if not read_setting(source, f"{prefix}_BREAKER_ENABLED", True):
        return False
    defaults = BACKEND_BREAKER_DEFAULTS[backend]
    return CircuitBreakerConfig(
        failure_threshold=read_setting(
            source, f"{prefix}_BREAKER_FAILURE_THRESHOLD", defaults.failure_threshold
        ),
        recovery_timeout=read_setting(
            source, f"{prefix}_BREAKER_RECOVERY_TIMEOUT", defaults.recovery_timeout
        ),
    )


def _config(source: object, name: str, prefix: str) -> ConnectionPoolConfig:
    values: dict[str, Any] = {}
    defaults = {**_COMMON, **_DEFAULTS[prefix]}
    for key, default in defaults.items():
        values[key.lower()] = read_setting(source, f"{prefix}_POOL_{key}", default)
    return _config_of(source, name, values)


def _config_of(source: object, name: str, values: dict[str, Any]) -> ConnectionPoolConfig:
    """A pool config from the lower-case keys of :data:`_COMMON` and :data:`_DEFAULTS`."""
    return ConnectionPoolConfig(
        pool_name=name,
        min_size=values["min_size"],
        max_size=values["max_size"],
        idle_timeout=values["idle_timeout"],
        connection_timeout=values["connect_timeout"],
        health_check_interval=values["health_check_interval"],
        max_lifetime=values["max_lifetime"],
        max_waiting=values["max_waiting"],
        leak_detection_threshold=values["leak_detection_threshold"],
        queue_target=values["queue_target"],
        queue_interval=values["queue_interval"],
        adaptive_limit=values["adaptive_limit"],
        drain_timeout=read_setting(source, "POOL_DRAIN_TIMEOUT", 20.0),
    )


def _database_options(source: object) -> dict[str, Any]:
    """PgBouncer mode and read replicas of the database pool, when set."""
    options: dict[str, Any] = {
        "statement_timeout": read_setting(source, "DB_POOL_STATEMENT_TIMEOUT", 30.0) or None
    }
    check = read_setting(source, "DB_POOL_CHECK", "window")
    if check != "window":
        options["check"] = check
    pgbouncer = read_setting(source, "DB_POOL_PGBOUNCER", "off")
    if pgbouncer != "off":
        options["pgbouncer"] = pgbouncer
    replicas = _secret_text(getattr(source, "DATABASE_REPLICA_URLS", None))
    if replicas:
        options["replica_urls"] = replicas
    options.update(database_tls_options(source))
    return options


def pool_specs(source: object) -> list[PoolSpec]:
    """The pools ``source`` (a :class:`~resync.settings.Settings`) enables, in start order."""
    specs = [
        PoolSpec(
            DATABASE_POOL,
            "database",
            _config(source, DATABASE_POOL, "DB"),
            _secret_text(getattr(source, "DATABASE_URL", None)) or "sqlite+aiosqlite:///:memory:",
            True,
            _database_options(source),
            breaker_config(source, "database"),
        )
    ]
    redis_url = _secret_text(getattr(source, "REDIS_URL", None))
    if redis_url and read_setting(source, "REDIS_POOL_MIN_SIZE", 1) > 0:
        specs.append(
            PoolSpec(
                REDIS_POOL,
                "redis",
                _config(source, REDIS_POOL, "REDIS"),
                redis_url,
                read_setting(source, "REDIS_REQUIRED", False),
                redis_tls_options(source),
                breaker_config(source, "redis"),
            )
        )
        sentinel_password = _secret_text(getattr(source, "REDIS_SENTINEL_PASSWORD", None))
        if sentinel_password:
            specs[-1].options["sentinel_password"] = sentinel_password
    http_url = _secret_text(getattr(source, "TWS_BASE_URL", None))
    if http_url:
        specs.append(
            PoolSpec(
                HTTP_POOL,
                "http",
                _config(source, HTTP_POOL, "HTTP"),
                http_url,
                read_setting(source, "HTTP_REQUIRED", False),
                {
                    "enable_http2": read_setting(source, "HTTP_ENABLE_HTTP2", False),
                    "retry_budget": http_retry_budget(source),
                    **http_tls_options(source, HTTP_POOL),
                },
                breaker_config(source, "http"),
            )
        )
    specs.extend(named_pool_specs(source))
    return specs


def http_retry_budget(source: object) -> RetryBudget:
    """The retry budget of an HTTP pool (``HTTP_RETRY_BUDGET_*``; Finagle's defaults)."""
    return RetryBudget(
        percent=float(read_setting(source, "HTTP_RETRY_BUDGET_PERCENT", 20.0)),
        min_per_second=float(read_setting(source, "HTTP_RETRY_BUDGET_MIN_PER_SECOND", 10.0)),
    )


def named_pool_specs(source: object) -> list[PoolSpec]:
    """The pools of the ``POOLS`` setting (:mod:`resync.settings_pools`), by name."""
    named = getattr(source, "POOLS", None)
    if not isinstance(named, dict):
        return []
    specs = []
    for name, entry in named.items():
        backend = entry.backend
        defaults = {**_COMMON, **_DEFAULTS[_PREFIX[backend]]}
        values = {key.lower(): default for key, default in defaults.items()}
        for key in values:
            given = getattr(entry, key, None)
            if given is not None:
                values[key] = given
        if entry.min_size is None:  # a small max_size alone must not break the default min
            values["min_size"] = min(values["min_size"], values["max_size"])
        config = _config_of(source, name, values)
        specs.append(
            PoolSpec(
                name,
                backend,
                config,
                entry.url,
                entry.required,
                {"retry_budget": http_retry_budget(source)} if backend == "http" else {},
                breaker_config(source, backend),
            )
        )
    return specs


def build_pool(spec: PoolSpec) -> ConnectionPool[Any]:
    """Construct (not open) the pool of ``spec``; drivers are imported only when used."""
    if spec.backend == "database":
        from resync.core.pools.database.pool import DatabaseConnectionPool

        return DatabaseConnectionPool(
            spec.config, spec.url, circuit_breaker=spec.breaker, **spec.options
        )
    if spec.backend == "redis":
        from resync.core.pools.redis.factory import create_redis_pool

        # One server, Sentinel or Cluster: the URL's scheme picks the class.
        return create_redis_pool(
            spec.config, spec.url, circuit_breaker=spec.breaker, **spec.options
        )
    if spec.backend == "http":
        from resync.core.pools.http.pool import HTTPConnectionPool

        return HTTPConnectionPool(
            spec.config, spec.url, circuit_breaker=spec.breaker, **spec.options
        )
    raise ValueError(f"unknown backend {spec.backend!r}")


def build_pools(source: object) -> list[tuple[PoolSpec, ConnectionPool[Any]]]:
    """Every pool ``source`` enables, constructed but not opened."""
    return [(spec, build_pool(spec)) for spec in pool_specs(source)]
