"""resync inside your own FastAPI app: a lifespan to compose and opt-in routes.

::

    from fastapi import FastAPI
    from resync.api import resync_lifespan, include_resync_routes, DBSession

    app = FastAPI(title="orders", lifespan=resync_lifespan)
    include_resync_routes(app, health=True, metrics=True, pools=True)

or, inside a lifespan of your own::

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with resync_lifespan(app):
            ...  # your own start-up, with the pools open
            yield

What the lifespan does, in order: picks the manager (``manager=`` given, else
one set on ``app.state.resync_manager`` before start, else a new one built on
``settings=``, else on the process settings read *now*, not at import); opens
it (a required pool that cannot open fails the start with
:class:`~resync.core.exceptions.ManagerStartError` naming the pool; an optional
one keeps retrying in the background, see
:class:`~resync.core.pools.pool_manager.ConnectionPoolManager`); sets
``app.state.resync_manager`` and ``app.state.resync_registry``; yields. On
shutdown it closes what it opened, draining leases for ``POOL_DRAIN_TIMEOUT``
seconds; a manager that was already open when given is left open (its owner
closes it). If the start is cancelled, pools already opened are closed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from resync.api import admin as admin_api
from resync.api import routes
from resync.api.errors import install_error_handlers
from resync.core.pools.manager.specs import read_setting
from resync.core.pools.pool_manager import ConnectionPoolManager
from resync.core.prometheus import build_registry
from resync.settings import Settings

__all__ = ["include_resync_routes", "resync_lifespan"]

logger = logging.getLogger("resync.api")


def _manager_for(
    app: FastAPI, settings: Settings | Any | None, manager: ConnectionPoolManager | None
) -> ConnectionPoolManager:
    if manager is not None and settings is not None:
        raise TypeError("resync_lifespan: pass settings= or manager=, not both")
    if manager is not None:
        return manager
    preset = getattr(app.state, "resync_manager", None)
    if isinstance(preset, ConnectionPoolManager) and settings is None and not preset.is_shutdown:
        return preset
    if settings is None:
        from resync.settings import get_settings

        settings = get_settings()
    return ConnectionPoolManager(settings)


@asynccontextmanager
async def resync_lifespan(
    app: FastAPI,
    *,
    settings: Settings | Any | None = None,
    manager: ConnectionPoolManager | None = None,
) -> AsyncIterator[None]:
    """Open resync's pools for ``app``'s lifetime (see the module docstring).

    ``FastAPI(lifespan=resync_lifespan)`` uses the process settings; for
    explicit ones write ``lifespan=functools.partial(resync_lifespan,
    settings=...)`` or ``async with resync_lifespan(app, manager=...)``.
    Raises ``TypeError`` when both are given.
    """
    chosen = _manager_for(app, settings, manager)
    owned = not chosen.is_open
    if owned:
        await chosen.initialize()
    app.state.resync_manager = chosen
    app.state.resync_registry = build_registry(
        lambda: chosen.pools,
        lambda: {name: h.state.value for name, h in chosen.health.items()},
    )
    try:
        yield
    finally:
        if owned:
            drain = read_setting(chosen.settings, "POOL_DRAIN_TIMEOUT", 20.0)
            logger.info("shutting down: draining pools for up to %ss", drain)
            await chosen.close_all(drain_timeout=drain)


def include_resync_routes(
    app: FastAPI,
    *,
    health: bool = True,
    metrics: bool = True,
    pools: bool = True,
    admin: bool = False,
    prefix: str = "",
    app_metrics: bool = True,
    error_contract: bool = True,
    settings: Settings | Any | None = None,
) -> None:
    """Mount resync's operational routes on ``app``; each family is opt-in.

    - ``health``: ``GET {prefix}/health/live`` and ``{prefix}/health/ready``;
    - ``metrics``: ``GET {prefix}/metrics`` (pool metrics; with ``app_metrics``
      also everything on prometheus-client's default registry: your own
      counters and ``process_*``/``python_*``);
    - ``pools``: ``GET {prefix}/pools`` (stats and health of every pool);
    - ``admin``: ``POST {prefix}/pools/{name}/drain`` and ``/resize``,
      mounted only when ``ADMIN_TOKEN`` is set in ``settings`` (default: the
      process settings) -- without a token they do not exist (404);
    - ``error_contract``: the JSON error answers of :mod:`resync.api.errors`
      (503 + Retry-After for an unavailable pool, no secret in any body), and
      each request's deadline from its ``X-Request-Timeout`` or
      ``grpc-timeout`` header (``resync.deadline()`` around the request; 504
      ``deadline_exceeded`` when it runs out).

    Call before the app starts. The routes read the manager the lifespan put
    on ``app.state``; before it ran they answer 503 ``pool_not_configured``.
    """
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ValueError(f"prefix must start with '/' and not end with one, got {prefix!r}")
    if error_contract:
        install_error_handlers(app)
    app.state.resync_metrics_app_registry = app_metrics
    router = routes.build_router(health=health, metrics=metrics, pools=pools)
    app.include_router(router, prefix=prefix)
    if admin:
        if settings is None:
            from resync.settings import get_settings

            settings = get_settings()
        if admin_api.admin_token(settings) is not None:
            app.include_router(admin_api.router, prefix=prefix)
        else:
            logger.info("admin routes not mounted: ADMIN_TOKEN is not set")
