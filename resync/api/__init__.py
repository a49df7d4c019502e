"""The FastAPI side of resync.

For your own app: :func:`resync_lifespan` (open the pools for the app's
lifetime), :func:`include_resync_routes` (opt-in health, metrics, pool routes
and the error contract), and the per-request dependencies (``DBSession``,
``OptionalRedis``, :func:`pool_lease` ...). ``create_app`` is the demo service
``resync serve`` runs.
"""

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
    pool_dependency,
    pool_lease,
)
from resync.api.errors import current_request_id, install_error_handlers
from resync.api.lifespan import include_resync_routes, resync_lifespan

__all__ = [
    "DBReadSession",
    "DBSession",
    "HTTPClient",
    "Manager",
    "OptionalRedis",
    "RedisClient",
    "create_app",
    "current_request_id",
    "get_db_read_session",
    "get_db_session",
    "get_http_client",
    "get_manager",
    "get_optional_redis",
    "get_redis",
    "include_resync_routes",
    "install_error_handlers",
    "pool_dependency",
    "pool_lease",
    "resync_lifespan",
]
