"""Settings read from the environment and from ``.env``.

Every field is named exactly as the environment variable that sets it
(``DATABASE_URL``, ``DB_POOL_MAX_SIZE`` ...). Values are validated when the
object is built; a bad value raises :class:`~resync.core.exceptions.SettingsError`
whose message names each variable and the rule it broke, with secrets hidden.

``settings`` is the process-wide instance the pool manager reads by default,
built on first use by :func:`get_settings` (never at import: importing resync
does not read the environment); tests and embedding applications pass their
own ``Settings(...)`` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from resync.core.exceptions import SettingsError
from resync.core.pools.redis.url import (
    CLUSTER_SCHEMES,
    SENTINEL_SCHEMES,
    STANDALONE_SCHEMES,
    parse_redis_target,
)
from resync.core.redact import mask_url
from resync.core.resilience import BACKEND_BREAKER_DEFAULTS
from resync.settings_pools import NamedPool, check_pool_names
from resync.settings_tls import check_ca_path, parse_verify, tls_problems

__all__ = [
    "BACKEND_PREFIXES",
    "URL_FIELDS",
    "Settings",
    "get_settings",
    "reset_settings",
    "settings",
]

#: Fields whose values may carry credentials; masked wherever settings are shown.
URL_FIELDS = frozenset({"DATABASE_URL", "DATABASE_REPLICA_URLS", "REDIS_URL", "TWS_BASE_URL"})

#: Prefix of the six pool variables of each backend.
BACKEND_PREFIXES = {"database": "DB", "redis": "REDIS", "http": "HTTP"}

#: Bounds of the ``*_BREAKER_*`` settings.
MAX_BREAKER_THRESHOLD = 1000
MAX_BREAKER_RECOVERY = 3600.0
_DB_BREAKER = BACKEND_BREAKER_DEFAULTS["database"]
_REDIS_BREAKER = BACKEND_BREAKER_DEFAULTS["redis"]
_HTTP_BREAKER = BACKEND_BREAKER_DEFAULTS["http"]


DBSSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class Settings(BaseSettings):
    """Everything resync reads from the environment.

    The six pool variables exist once per backend with the prefixes ``DB_``,
    ``REDIS_`` and ``HTTP_``: ``*_POOL_MIN_SIZE``, ``*_POOL_MAX_SIZE``,
    ``*_POOL_IDLE_TIMEOUT``, ``*_POOL_CONNECT_TIMEOUT``,
    ``*_POOL_HEALTH_CHECK_INTERVAL`` and ``*_POOL_MAX_LIFETIME`` (seconds).
    So do the three circuit breaker variables, which apply to every pool of
    the backend (``POOLS`` entries included): ``*_BREAKER_ENABLED``,
    ``*_BREAKER_FAILURE_THRESHOLD`` and ``*_BREAKER_RECOVERY_TIMEOUT`` (seconds).
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        hide_input_in_errors=True,
        validate_default=True,
        # "inf" and "nan" parse as floats; no size or timeout can be either.
        allow_inf_nan=False,
    )

    # --- database (always on; embedded SQLite by default) ---
    DATABASE_URL: str = Field(
        default="sqlite+aiosqlite:///:memory:",
        description="SQLAlchemy URL; sqlite+aiosqlite or postgresql+asyncpg.",
    )
    DB_POOL_MIN_SIZE: int = Field(default=2, ge=0, description="Connections opened at start.")
    DB_POOL_MAX_SIZE: int = Field(default=10, ge=1, description="Hard cap on leases at once.")
    DB_POOL_IDLE_TIMEOUT: float = Field(default=300.0, ge=0, description="Idle close after (s).")
    DB_POOL_CONNECT_TIMEOUT: float = Field(default=10.0, gt=0, description="Acquire timeout (s).")
    DB_POOL_HEALTH_CHECK_INTERVAL: float = Field(
        default=30.0, ge=0, description="Background check period (s); 0 disables."
    )
    DB_POOL_MAX_LIFETIME: float = Field(
        default=1800.0, ge=0, description="Recycle connections after (s); 0 = never."
    )
    DB_POOL_MAX_WAITING: int = Field(default=0, ge=0, description="Queue cap; 0 = unbounded.")
    DB_POOL_LEAK_DETECTION_THRESHOLD: float = Field(
        default=0.0, ge=0, description="Warn about leases held longer (s); 0 = off."
    )
    DB_POOL_QUEUE_TARGET: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="Queue management (CoDel): the wait a queued lease should get within (s), "
        "e.g. 0.05; set with DB_POOL_QUEUE_INTERVAL. 0 = off.",
    )
    DB_POOL_QUEUE_INTERVAL: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="Queue management: when no queued lease got a connection within the target "
        "for this long (s), e.g. 1.0, leases past 2x the target fail at once (503). 0 = off.",
    )
    DB_POOL_ADAPTIVE_LIMIT: bool = Field(
        default=False,
        description="Adjust the leases admitted at once (min_size..max_size) from lease times "
        "(Gradient2).",
    )
    DB_POOL_STATEMENT_TIMEOUT: float = Field(
        default=30.0,
        ge=0,
        le=86400,
        description="Seconds a statement may wait for the server (asyncpg command_timeout); "
        "then DatabaseStatementTimeoutError (504). 0 = no limit.",
    )
    DB_POOL_CHECK: Literal["window", "always"] = Field(
        default="window",
        description="Liveness check at checkout: 'window' hands out a connection used in the "
        "last 0.5 s with no round trip (its BEGIN goes with the first statement); 'always' "
        "checks every checkout.",
    )
    DB_POOL_PGBOUNCER: Literal["off", "session", "transaction"] = Field(
        default="off",
        description="PgBouncer pool_mode in front of DATABASE_URL; 'transaction' turns "
        "asyncpg's named prepared statements off.",
    )
    DATABASE_REPLICA_URLS: str | None = Field(
        default=None,
        description="Comma-separated read replica URLs for read sessions (PostgreSQL).",
    )
    DB_SSL_MODE: DBSSLMode | None = Field(
        default=None, description="TLS to PostgreSQL (libpq's sslmode names); unset: the URL's."
    )
    DB_SSL_ROOT_CERT: Path | None = Field(
        default=None, description="CA certificate(s) the server's certificate is checked against."
    )
    DB_SSL_CERT: FilePath | None = Field(default=None, description="Client certificate (mTLS).")
    DB_SSL_KEY: FilePath | None = Field(default=None, description="Unencrypted key of DB_SSL_CERT.")
    DB_BREAKER_ENABLED: bool = Field(
        default=True,
        description="Circuit breaker of the database pools: while the server fails, "
        "leases fail fast (DatabaseUnavailableError) and reconnects are spaced.",
    )
    DB_BREAKER_FAILURE_THRESHOLD: int = Field(
        default=_DB_BREAKER.failure_threshold,
        description="Connection failures in a row that open the breaker.",
    )
    DB_BREAKER_RECOVERY_TIMEOUT: float = Field(
        default=_DB_BREAKER.recovery_timeout,
        description="Seconds the open breaker fails leases fast before one probes the server.",
    )

    # --- further pools by name (resync.settings_pools) ---
    POOLS: dict[str, NamedPool] = Field(
        default_factory=dict,
        description="Further pools by name, as JSON: "
        '{"reports": {"url": "postgresql+asyncpg://...", "max_size": 5}}; '
        "the URL's scheme picks the backend.",
    )

    # --- Redis (on when REDIS_URL is set) ---
    REDIS_URL: str | None = Field(
        default=None,
        description="redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://",
    )
    REDIS_SENTINEL_PASSWORD: SecretStr | None = Field(
        default=None, description="Password of the Sentinels (redis+sentinel:// URLs only)."
    )
    REDIS_POOL_MIN_SIZE: int = Field(default=1, ge=0)
    REDIS_POOL_MAX_SIZE: int = Field(default=10, ge=1)
    REDIS_POOL_IDLE_TIMEOUT: float = Field(default=300.0, ge=0)
    REDIS_POOL_CONNECT_TIMEOUT: float = Field(default=5.0, gt=0)
    REDIS_POOL_HEALTH_CHECK_INTERVAL: float = Field(default=30.0, ge=0)
    REDIS_POOL_MAX_LIFETIME: float = Field(default=1800.0, ge=0)
    REDIS_POOL_MAX_WAITING: int = Field(default=0, ge=0)
    REDIS_POOL_LEAK_DETECTION_THRESHOLD: float = Field(
        default=0.0, ge=0, description="Warn about leases held longer (s); 0 = off."
    )
    REDIS_POOL_QUEUE_TARGET: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="Queue management target (s), as DB_POOL_QUEUE_TARGET.",
    )
    REDIS_POOL_QUEUE_INTERVAL: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="Queue management interval (s), as DB_POOL_QUEUE_INTERVAL.",
    )
    REDIS_POOL_ADAPTIVE_LIMIT: bool = Field(
        default=False, description="Adaptive concurrency limit, as DB_POOL_ADAPTIVE_LIMIT."
    )
    REDIS_REQUIRED: bool = Field(default=False, description="Readiness fails if Redis is down.")
    REDIS_SSL_CA_CERTS: Path | None = Field(
        default=None, description="CA certificate(s) for a rediss:// server."
    )
    REDIS_SSL_CERT_REQS: Literal["required", "optional", "none"] | None = Field(
        default=None, description="Check the rediss:// server's certificate (default required)."
    )
    REDIS_SSL_CERTFILE: FilePath | None = Field(default=None, description="Client certificate.")
    REDIS_SSL_KEYFILE: FilePath | None = Field(default=None, description="Key of the certificate.")
    REDIS_BREAKER_ENABLED: bool = Field(
        default=True, description="Circuit breaker of the Redis pools (as DB_BREAKER_ENABLED)."
    )
    REDIS_BREAKER_FAILURE_THRESHOLD: int = Field(default=_REDIS_BREAKER.failure_threshold)
    REDIS_BREAKER_RECOVERY_TIMEOUT: float = Field(default=_REDIS_BREAKER.recovery_timeout)

    # --- upstream HTTP API (on when TWS_BASE_URL is set) ---
    # "TWS" is the seed's name for the one upstream HTTP API the service calls;
    # its pool is named "tws_http" and its errors are TWSConnectionError.
    TWS_BASE_URL: str | None = Field(default=None, description="http(s):// base of the API.")
    HTTP_POOL_MIN_SIZE: int = Field(default=1, ge=0)
    HTTP_POOL_MAX_SIZE: int = Field(default=20, ge=1)
    HTTP_POOL_IDLE_TIMEOUT: float = Field(default=60.0, ge=0)
    HTTP_POOL_CONNECT_TIMEOUT: float = Field(default=10.0, gt=0)
    HTTP_POOL_HEALTH_CHECK_INTERVAL: float = Field(default=30.0, ge=0)
    HTTP_POOL_MAX_LIFETIME: float = Field(default=1800.0, ge=0)
    HTTP_POOL_MAX_WAITING: int = Field(default=0, ge=0)
    HTTP_POOL_LEAK_DETECTION_THRESHOLD: float = Field(
        default=0.0, ge=0, description="Warn about leases held longer (s); 0 = off."
    )
    HTTP_POOL_QUEUE_TARGET: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="Queue management target (s), as DB_POOL_QUEUE_TARGET.",
    )
    HTTP_POOL_QUEUE_INTERVAL: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="Queue management interval (s), as DB_POOL_QUEUE_INTERVAL.",
    )
    HTTP_POOL_ADAPTIVE_LIMIT: bool = Field(
        default=False, description="Adaptive concurrency limit, as DB_POOL_ADAPTIVE_LIMIT."
    )
    HTTP_ENABLE_HTTP2: bool = Field(default=False, description="Needs the h2 extra.")
    HTTP_REQUIRED: bool = Field(default=False, description="Readiness fails if it is down.")
    HTTP_BREAKER_ENABLED: bool = Field(
        default=True, description="Circuit breaker of the HTTP pools (5xx answers count too)."
    )
    HTTP_BREAKER_FAILURE_THRESHOLD: int = Field(default=_HTTP_BREAKER.failure_threshold)
    HTTP_BREAKER_RECOVERY_TIMEOUT: float = Field(default=_HTTP_BREAKER.recovery_timeout)
    HTTP_RETRY_BUDGET_PERCENT: float = Field(
        default=20.0,
        ge=0,
        le=1000,
        description="Retries of the HTTP pools: at most this % of the requests of the last 10 s "
        "(Finagle's retry budget; 0 with HTTP_RETRY_BUDGET_MIN_PER_SECOND=0: no retries).",
    )
    HTTP_RETRY_BUDGET_MIN_PER_SECOND: float = Field(
        default=10.0,
        ge=0,
        le=1_000_000,
        description="...plus this many retries per second (a reserve of 10x it over the window), "
        "so a pool with few requests can still retry a blip.",
    )
    HTTP_VERIFY: bool | Path = Field(
        default=True,
        description="Check the upstream's TLS certificate: true (system CAs), false, "
        "or the path of a CA bundle (file or directory).",
    )

    # --- process ---
    POOL_DRAIN_TIMEOUT: float = Field(
        default=20.0, ge=0, description="Seconds close waits for active leases."
    )
    WORKERS: int = Field(
        default=1, ge=1, description="Worker processes per instance (resync serve --workers)."
    )
    REPLICAS: int = Field(
        default=1,
        ge=1,
        description="Instances (pods) of the service sharing the servers' connection limits.",
    )
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    LOG_FORMAT: Literal["text", "json"] = Field(
        default="text",
        description="Log lines of `resync serve`: 'text' (human) or 'json' (one object per "
        "line with time, level, logger, message, and pool/event/request_id when known).",
    )
    HOST: str = Field(default="127.0.0.1", description="Address `resync serve` binds.")
    PORT: int = Field(default=8000, ge=0, le=65535, description="Port `resync serve` binds.")
    ADMIN_TOKEN: SecretStr | None = Field(
        default=None,
        description="Bearer token of the admin endpoints (POST /pools/{name}/drain, /resize); "
        "unset: they do not exist.",
    )
    RESYNC_TEST_SANDBOX: bool = Field(
        default=False,
        description="Tests only: a request carrying X-Resync-Sandbox runs its database leases "
        "in that test sandbox's transaction, rolled back when the test ends "
        "(resync/testing/README.md). Needs HOST on loopback; never set it in production.",
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _settings_error(exc) from None
        except PydanticSettingsError as exc:
            # A complex value (POOLS) that is not JSON; pydantic-settings names
            # the field in its message, never the value.
            field = str(exc).split('"')[1] if str(exc).count('"') >= 2 else "settings"
            rule = "must be a JSON object (see the README's settings table)"
            raise SettingsError(
                f"Invalid resync settings (environment or .env):\n  {field}: {rule}",
                [(field, rule)],
            ) from None

    # --- validation ---

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("POOLS")
    @classmethod
    def _check_pools(cls, value: dict[str, NamedPool]) -> dict[str, NamedPool]:
        return check_pool_names(value)

    @field_validator("LOG_FORMAT", mode="before")
    @classmethod
    def _lower_log_format(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("DATABASE_URL")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        if not value.strip():
            raise ValueError("must not be empty (e.g. sqlite+aiosqlite:///:memory:)")
        try:
            make_url(value)
        except (ArgumentError, ValueError):
            raise ValueError(
                "must be a SQLAlchemy URL such as postgresql+asyncpg://user:pass@host/db"
            ) from None
        return value

    @field_validator("REDIS_URL", "TWS_BASE_URL", "DATABASE_REPLICA_URLS", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(*(f"{p}_BREAKER_ENABLED" for p in BACKEND_PREFIXES.values()), mode="before")
    @classmethod
    def _check_breaker_enabled(cls, value: Any) -> Any:
        words = {"true", "false", "1", "0", "yes", "no", "on", "off"}
        if isinstance(value, str) and value.strip().lower() not in words:
            raise ValueError("must be true or false (also 1/0, yes/no, on/off)")
        return value.strip() if isinstance(value, str) else value

    @field_validator(*(f"{p}_BREAKER_FAILURE_THRESHOLD" for p in BACKEND_PREFIXES.values()))
    @classmethod
    def _check_breaker_threshold(cls, value: int, info: ValidationInfo) -> int:
        if not 1 <= value <= MAX_BREAKER_THRESHOLD:
            enabled = str(info.field_name).replace("FAILURE_THRESHOLD", "ENABLED")
            raise ValueError(
                f"must be between 1 and {MAX_BREAKER_THRESHOLD}: the connection failures in "
                f"a row that open the circuit breaker (to have none, set {enabled}=false)"
            )
        return value

    @field_validator(*(f"{p}_BREAKER_RECOVERY_TIMEOUT" for p in BACKEND_PREFIXES.values()))
    @classmethod
    def _check_breaker_recovery(cls, value: float) -> float:
        if not 0 < value <= MAX_BREAKER_RECOVERY:
            raise ValueError(
                f"must be more than 0 and at most {MAX_BREAKER_RECOVERY:g} seconds: how long "
                "the open circuit breaker fails callers fast before it lets one probe the server"
            )
        return value

    @field_validator("DB_POOL_PGBOUNCER", mode="before")
    @classmethod
    def _lower_pgbouncer(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("DATABASE_REPLICA_URLS")
    @classmethod
    def _check_replica_urls(cls, value: str | None) -> str | None:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        if value is None:
            return value
        parts = [part.strip() for part in value.split(",") if part.strip()]
        for number, part in enumerate(parts, start=1):
            try:
                backend = make_url(part).get_backend_name()
            except (ArgumentError, ValueError):
                raise ValueError(
                    f"URL #{number} must be a SQLAlchemy URL such as "
                    "postgresql+asyncpg://user:pass@replica-host/db (comma-separated)"
                ) from None
            if backend not in ("postgresql", "postgres"):
                raise ValueError(f"URL #{number} must be a PostgreSQL URL, not {backend!r}")
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value.split("://", 1)[0].lower() in SENTINEL_SCHEMES | CLUSTER_SCHEMES:
            parse_redis_target(value)  # its ValueError says what is wrong, password masked
            return value
        try:
            parts = urlsplit(value)
            _ = parts.port
        except ValueError:
            raise ValueError("must be a URL such as redis://host:6379/0") from None
        if parts.scheme not in STANDALONE_SCHEMES:
            raise ValueError(
                "must start with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
            )
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("must name a host, e.g. redis://127.0.0.1:6379/0")
        return value

    @field_validator("TWS_BASE_URL")
    @classmethod
    def _check_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        import httpx

        try:
            parts = urlsplit(value)
            _ = parts.port
            httpx.URL(value)  # what the HTTP pool will parse it with
        except (ValueError, httpx.InvalidURL):
            raise ValueError("must be a URL such as https://api.example.com") from None
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("DB_SSL_ROOT_CERT", "REDIS_SSL_CA_CERTS")
    @classmethod
    def _check_ca_path(cls, value: Path | None) -> Path | None:
        return check_ca_path(value)

    @field_validator("HTTP_VERIFY", mode="before")
    @classmethod
    def _parse_http_verify(cls, value: Any) -> Any:
        return parse_verify(value)

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        broken = tls_problems(self)
        if broken:
            raise ValueError("; ".join(broken))
        return self

    @model_validator(mode="after")
    def _check_test_sandbox(self) -> Settings:
        # A deployed service binds a routable address; the sandbox header is for a
        # server a test started on this machine, so anything else is refused.
        if self.RESYNC_TEST_SANDBOX and self.HOST not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(
                "RESYNC_TEST_SANDBOX is for a server under test on this machine: HOST must be "
                f"127.0.0.1, ::1 or localhost (got {self.HOST!r}); unset RESYNC_TEST_SANDBOX"
            )
        return self

    @field_validator("ADMIN_TOKEN")
    @classmethod
    def _check_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < 16:
            raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return value

    @model_validator(mode="after")
    def _check_sentinel_password(self) -> Settings:
        url = self.REDIS_URL or ""
        if self.REDIS_SENTINEL_PASSWORD is not None and not url.startswith("redis+sentinel://"):
            raise ValueError("REDIS_SENTINEL_PASSWORD needs a redis+sentinel:// REDIS_URL")
        return self

    @model_validator(mode="after")
    def _check_queue_management(self) -> Settings:
        # The pool config's own rule, checked here so a bad pair names its variables
        # at start-up instead of failing when the pool is built.
        broken = []
        for prefix in BACKEND_PREFIXES.values():
            target = getattr(self, f"{prefix}_POOL_QUEUE_TARGET")
            interval = getattr(self, f"{prefix}_POOL_QUEUE_INTERVAL")
            if (target > 0) != (interval > 0):
                broken.append(
                    f"{prefix}_POOL_QUEUE_TARGET ({target:g}) and {prefix}_POOL_QUEUE_INTERVAL "
                    f"({interval:g}) must be set together (e.g. 0.05 and 1.0), or both 0 (off)"
                )
            elif target and target >= interval:
                broken.append(
                    f"{prefix}_POOL_QUEUE_TARGET ({target:g}) must be shorter than "
                    f"{prefix}_POOL_QUEUE_INTERVAL ({interval:g})"
                )
        if broken:
            raise ValueError("; ".join(broken))
        return self

    @model_validator(mode="after")
    def _check_min_max(self) -> Settings:
        broken = []
        for prefix in BACKEND_PREFIXES.values():
            low = getattr(self, f"{prefix}_POOL_MIN_SIZE")
            high = getattr(self, f"{prefix}_POOL_MAX_SIZE")
            if high < low:
                broken.append(
                    f"{prefix}_POOL_MAX_SIZE ({high}) must be >= {prefix}_POOL_MIN_SIZE ({low})"
                )
        for name, entry in self.POOLS.items():  # an unset max_size is its backend's
            if entry.min_size is None:
                continue  # an unset min_size follows max_size down (see manager/specs.py)
            prefix = BACKEND_PREFIXES[entry.backend]
            high = entry.max_size
            if high is None:
                high = getattr(self, f"{prefix}_POOL_MAX_SIZE")
            if high < entry.min_size:
                broken.append(
                    f"POOLS.{name}: max_size ({high}) must be >= min_size ({entry.min_size}); "
                    f"an unset max_size is {prefix}_POOL_MAX_SIZE"
                )
        if broken:
            raise ValueError("; ".join(broken))
        return self

    # --- display ---

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name in URL_FIELDS and value is not None:
                yield name, mask_url(value)
            else:
                yield name, value

    # The URL fields stay plain ``str`` (the seed and every driver read them as
    # strings), so they behave like SecretStr only where settings are shown:
    # repr, model_dump() and model_dump_json() all mask their passwords.
    @field_serializer(*sorted(URL_FIELDS), when_used="always")
    def _mask_url_fields(self, value: str | None) -> str | None:
        return mask_url(value) if value is not None else None

    def masked(self) -> dict[str, Any]:
        """Every setting as a plain dict, with the password of each URL masked."""
        return self.model_dump()


def _settings_error(exc: ValidationError) -> SettingsError:
    """Turn pydantic's error into one line per variable, naming the rule broken."""
    problems: list[tuple[str, str]] = []
    for err in exc.errors(include_input=False, include_url=False):
        parts = [str(part) for part in err["loc"]]
        # The variable's name upper-case, keys inside it (POOLS.reports.url) as written.
        loc = ".".join([parts[0].upper(), *parts[1:]]) if parts else "settings"
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        problems.append((loc, message))
    lines = [f"  {name}: {rule}" for name, rule in problems]
    text = "Invalid resync settings (environment or .env):\n" + "\n".join(lines)
    return SettingsError(text, problems)


_process_settings: Settings | None = None

if TYPE_CHECKING:
    #: The process-wide settings (built by :func:`get_settings` on first use).
    settings: Settings


def get_settings() -> Settings:
    """The process-wide settings, built from the environment and ``.env`` on first call.

    Cached: later calls return the same object. Raises ``SettingsError`` (naming
    each variable and its rule) when a value is invalid; nothing is cached then,
    so a corrected environment is read on the next call.
    """
    global _process_settings
    if _process_settings is None:
        _process_settings = Settings()
    return _process_settings


def reset_settings() -> None:
    """Forget the cached process settings; the next :func:`get_settings` reads again."""
    global _process_settings
    _process_settings = None


def __getattr__(name: str) -> Any:
    # ``resync.settings.settings`` (the seed's name) is built lazily, so importing
    # resync never reads the environment; ``patch("resync.settings.settings")`` works.
    if name == "settings":
        return get_settings()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
