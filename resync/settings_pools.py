"""Named pools from settings: ``POOLS``, further databases, Redis servers and upstream APIs.

Beside the three pools of fixed name (``database`` from ``DATABASE_URL``,
``redis`` from ``REDIS_URL``, ``tws_http`` from ``TWS_BASE_URL``), ``POOLS``
declares any number of pools by name, as a JSON object (environment or
``.env``)::

    POOLS='{"reports": {"url": "postgresql+asyncpg://ro@replica/app", "max_size": 5},
            "billing": {"url": "https://billing.internal", "required": true}}'

The backend follows from the URL's scheme (``sqlite+aiosqlite``/``postgresql+
asyncpg`` → database, ``redis[s]``/``redis+sentinel``/``redis+cluster`` → Redis,
``http[s]`` → HTTP). Every other key is optional, with the defaults of the
backend's fixed-name pool (resync's built-in defaults, not the ``DB_POOL_*``
variables of that pool): ``min_size``, ``max_size``, ``connect_timeout``,
``idle_timeout``, ``max_lifetime``, ``health_check_interval``,
``max_waiting``, ``queue_target`` / ``queue_interval`` (queue management),
``adaptive_limit``, ``required`` (default false: an optional pool that cannot
open is opened in the background). The URL is masked wherever settings are
shown (repr, ``model_dump``). The ``*_SSL_*``/``HTTP_VERIFY`` settings apply
to the fixed-name pools only; a named pool's TLS is what its URL says
(``?ssl=verify-full``, ``rediss://``, ``https://`` with the system CAs).
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from resync.core.pools.redis.url import CLUSTER_SCHEMES, SENTINEL_SCHEMES, STANDALONE_SCHEMES
from resync.core.redact import mask_url

__all__ = ["RESERVED_NAMES", "NamedPool", "backend_of", "check_pool_names"]

#: The names of the pools configured by their own settings.
RESERVED_NAMES = frozenset({"database", "redis", "tws_http"})
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")

Backend = Literal["database", "redis", "http"]


def backend_of(url: str) -> Backend:
    """The backend a URL names by its scheme; ``ValueError`` saying the accepted ones."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in {"sqlite+aiosqlite", "postgresql+asyncpg", "postgresql", "postgres"}:
        return "database"
    if scheme in STANDALONE_SCHEMES | SENTINEL_SCHEMES | CLUSTER_SCHEMES:
        return "redis"
    if scheme in {"http", "https"}:
        return "http"
    raise ValueError(
        "url must start with sqlite+aiosqlite://, postgresql+asyncpg://, redis://, "
        "rediss://, redis+sentinel://, redis+cluster://, http:// or https://"
    )


class NamedPool(BaseModel):
    """One entry of ``POOLS``: a URL and optional sizes and timeouts."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str = Field(description="Where the pool connects; its scheme picks the backend.")
    min_size: int | None = Field(default=None, ge=0)
    max_size: int | None = Field(default=None, ge=1)
    connect_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    idle_timeout: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_lifetime: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    health_check_interval: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_waiting: int | None = Field(default=None, ge=0)
    queue_target: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    queue_interval: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    adaptive_limit: bool | None = None
    required: bool = False

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        backend = backend_of(value)
        try:
            parts = urlsplit(value)
            _ = parts.port
        except ValueError:
            raise ValueError("url is not a valid URL (check the port)") from None
        if backend == "http" and not parts.hostname:
            raise ValueError("an http(s) url must name a host")
        if backend == "database" and value.lower().startswith(("postgresql://", "postgres://")):
            raise ValueError("a PostgreSQL url must name its driver: postgresql+asyncpg://")
        return value

    @model_validator(mode="after")
    def _check_pairs(self) -> NamedPool:
        # The pool config's rules between fields, checked here so a bad entry fails
        # at start-up naming its keys, not when the pool is built.
        if (
            self.min_size is not None
            and self.max_size is not None
            and self.max_size < self.min_size
        ):
            raise ValueError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size})")
        target, interval = self.queue_target or 0.0, self.queue_interval or 0.0
        if (target > 0) != (interval > 0):
            raise ValueError(
                f"queue_target ({target:g}) and queue_interval ({interval:g}) must be set "
                "together (e.g. 0.05 and 1.0), or both left out (off)"
            )
        if target and target >= interval:
            raise ValueError(
                f"queue_target ({target:g}) must be shorter than queue_interval ({interval:g})"
            )
        return self

    @field_serializer("url", when_used="always")
    def _masked_url(self, value: str) -> str:
        return mask_url(value)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name == "url" else value

    @property
    def backend(self) -> Backend:
        """``database``, ``redis`` or ``http``, from the URL's scheme."""
        return backend_of(self.url)


def check_pool_names(pools: dict[str, NamedPool]) -> dict[str, NamedPool]:
    """Every name is a plain identifier and none is a fixed pool's name."""
    for name in pools:
        if name in RESERVED_NAMES:
            raise ValueError(
                f"'{name}' is the name of a pool with its own settings; pick another name"
            )
        if not _NAME.match(name):
            raise ValueError(
                f"pool name {name!r} must be lower-case letters, digits, '_' or '-', "
                "starting with a letter (at most 63 characters)"
            )
    return pools
