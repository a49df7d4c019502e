"""The service ``resync serve`` runs: ``create_app()``, built on the public pieces.

``create_app`` is :func:`~resync.api.lifespan.resync_lifespan` plus
:func:`~resync.api.lifespan.include_resync_routes` on a FastAPI app of its own
(title "resync"), and, with ``include_examples=True`` (what ``resync serve``
asks for through :func:`serve_app`), the example ``/api/kv`` router and its
``resync_kv`` table. An app of your own should use those two pieces directly
(README "In a FastAPI app"); ``create_app`` is the demo service.

The admin endpoints (:mod:`resync.api.admin`) are mounted only when
``ADMIN_TOKEN`` is set; the test sandbox header (:mod:`resync.api.sandbox`) is
honoured only when ``RESYNC_TEST_SANDBOX`` is.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from resync import __version__
from resync.api import kv
from resync.api.lifespan import include_resync_routes, resync_lifespan
from resync.api.sandbox import install_sandbox_header
from resync.core.pools.manager.specs import DATABASE_POOL
from resync.core.pools.pool_manager import ConnectionPoolManager
from resync.settings import Settings

__all__ = ["create_app", "serve_app"]

logger = logging.getLogger("resync.api")


def create_app(
    settings: Settings | Any | None = None, *, include_examples: bool = False
) -> FastAPI:
    """Build the service app. ``settings`` defaults to the process-wide ones,
    read when this is called (not at import).

    Nothing is opened here; the pools open when the app's lifespan starts
    (uvicorn, or ``asgi_lifespan.LifespanManager`` in tests) and close, with a
    drain of ``POOL_DRAIN_TIMEOUT`` seconds, when it ends.
    """
    if settings is None:
        from resync.settings import get_settings

        settings = get_settings()
    manager = ConnectionPoolManager(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with resync_lifespan(app, manager=manager):
            if include_examples:
                await kv.create_kv_table(manager.pool(DATABASE_POOL))
            yield

    app = FastAPI(
        title="resync",
        version=__version__,
        summary="Connection pools for PostgreSQL/SQLite, Redis and upstream HTTP APIs",
        lifespan=lifespan,
    )
    app.state.resync_manager = manager
    include_resync_routes(app, admin=True, settings=settings)
    install_sandbox_header(app, settings)  # RESYNC_TEST_SANDBOX only (tests)
    if include_examples:
        app.include_router(kv.router)
    return app


def serve_app() -> FastAPI:
    """What ``resync serve`` runs: :func:`create_app` with the ``/api/kv`` example."""
    return create_app(include_examples=True)
