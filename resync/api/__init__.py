"""The FastAPI side of resync: the app factory and per-request dependencies."""

from __future__ import annotations

from resync.api.app import create_app
from resync.api.deps import (
    DBReadSession,
    DBSession,
    HTTPClient,
    Manager,
    OptionalRedis,
    RedisClient,
    get_db_read_session,
    get_db_session,
    get_http_client,
    get_manager,
    get_optional_redis,
    get_redis,
)

__all__ = [
    "DBReadSession",
    "DBSession",
    "HTTPClient",
    "Manager",
    "OptionalRedis",
    "RedisClient",
    "create_app",
    "get_db_read_session",
    "get_db_session",
    "get_http_client",
    "get_manager",
    "get_optional_redis",
    "get_redis",
]
