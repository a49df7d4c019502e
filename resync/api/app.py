"""The FastAPI service: ``create_app()`` and its lifespan.

The lifespan opens the pool manager (all-or-nothing: if a pool cannot open,
the app does not start) and, on shutdown, closes it with a drain of
``POOL_DRAIN_TIMEOUT`` seconds so requests in flight keep their connections.
The database pool gets the example ``resync_kv`` table on start. The admin
endpoints (:mod:`resync.api.admin`) are mounted only when ``ADMIN_TOKEN`` is set.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from resync import __version__
from resync.api import admin, kv, routes
from resync.api.errors import install_error_handlers
from resync.core.pools.manager.specs import DATABASE_POOL, read_setting
from resync.core.pools.pool_manager import ConnectionPoolManager
from resync.core.prometheus import build_registry
from resync.settings import Settings

__all__ = ["create_app"]

logger = logging.getLogger("resync.api")


def create_app(settings: Settings | Any | None = None, *, include_examples: bool = True) -> FastAPI:
    """Build the service. ``settings`` defaults to the process-wide ones.

    Nothing is opened here; the pools open when the app's lifespan starts
    (uvicorn, or ``asgi_lifespan.LifespanManager`` in tests).
    """
    if settings is None:
        from resync.settings import settings as process_settings

        settings = process_settings
    manager = ConnectionPoolManager(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.initialize()
        app.state.resync_manager = manager
        try:
            if include_examples:
                await kv.create_kv_table(manager.pool(DATABASE_POOL))
            yield
        finally:
            drain = read_setting(settings, "POOL_DRAIN_TIMEOUT", 20.0)
            logger.info("shutting down: draining pools for up to %ss", drain)
            await manager.close_all(drain_timeout=drain)

    app = FastAPI(
        title="resync",
        version=__version__,
        summary="Connection pools for PostgreSQL/SQLite, Redis and upstream HTTP APIs",
        lifespan=lifespan,
    )
    app.state.resync_manager = manager
    app.state.resync_registry = build_registry(
        lambda: manager.pools,
        lambda: {name: h.state.value for name, h in manager.health.items()},
    )
    install_error_handlers(app)
    app.include_router(routes.router)
    if admin.admin_token(settings) is not None:  # no token: the admin routes do not exist
        app.include_router(admin.router)
    if include_examples:
        app.include_router(kv.router)
    return app
