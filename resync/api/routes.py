"""Operational endpoints: liveness, readiness, Prometheus metrics, pool stats.

- ``GET /health/live``: the process answers; no I/O, so a slow backend never
  gets a healthy pod killed.
- ``GET /health/ready``: 200 when every required pool is healthy according to
  the background checks, else 503; no I/O either, so it answers in
  milliseconds even when a backend hangs.
- ``GET /metrics``: Prometheus text, read from the pools at scrape time; when
  the app says so (``include_resync_routes(..., app_metrics=True)``, the
  default) followed by prometheus-client's default registry (the app's own
  metrics, ``process_*``, ``python_*``).
- ``GET /pools``: stats and health of every pool (one schema, no secrets).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from resync.api.deps import Manager
from resync.core.exceptions import ManagerError

__all__ = ["build_router", "router"]


async def live() -> dict[str, str]:
    """Liveness: the process is up and its event loop answers."""
    return {"status": "alive"}


async def ready(manager: Manager) -> JSONResponse:
    """Readiness from the background health checks (200 ready, 503 not)."""
    report = manager.readiness()
    status = 200 if report["ready"] else 503
    headers = {} if report["ready"] else {"Retry-After": "5"}
    return JSONResponse(
        {"status": "ready" if report["ready"] else "not_ready", **report},
        status_code=status,
        headers=headers,
    )


async def metrics_text(request: Request) -> Response:
    """Prometheus exposition format (text 0.0.4)."""
    registry: CollectorRegistry | None = getattr(request.app.state, "resync_registry", None)
    if registry is None:
        raise ManagerError("the resync pool manager is not running in this app (lifespan not run)")
    body = generate_latest(registry)
    if getattr(request.app.state, "resync_metrics_app_registry", False):
        body += generate_latest(REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def pool_stats(manager: Manager) -> dict[str, Any]:
    """Stats of every pool, same keys for every backend, plus its health."""
    return {"pools": manager.get_pool_stats()}


def build_router(*, health: bool = True, metrics: bool = True, pools: bool = True) -> APIRouter:
    """A router with the chosen families of operational routes."""
    built = APIRouter(tags=["operations"])
    if health:
        built.add_api_route("/health/live", live, methods=["GET"])
        built.add_api_route("/health/ready", ready, methods=["GET"])
    if metrics:
        built.add_api_route("/metrics", metrics_text, methods=["GET"], include_in_schema=False)
    if pools:
        built.add_api_route("/pools", pool_stats, methods=["GET"])
    return built


#: Every operational route (what ``create_app`` mounts).
router = build_router()
