"""Operational endpoints: liveness, readiness, Prometheus metrics, pool stats.

- ``GET /health/live``: the process answers; no I/O, so a slow backend never
  gets a healthy pod killed.
- ``GET /health/ready``: 200 when every required pool is healthy according to
  the background checks, else 503; no I/O either, so it answers in
  milliseconds even when a backend hangs.
- ``GET /metrics``: Prometheus text, read from the pools at scrape time.
- ``GET /pools``: stats and health of every pool (one schema, no secrets).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from resync.api.deps import Manager

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/health/live")
async def live() -> dict[str, str]:
    """Liveness: the process is up and its event loop answers."""
    return {"status": "alive"}


@router.get("/health/ready")
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


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition format (text 0.0.4)."""
    registry: CollectorRegistry = request.app.state.resync_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/pools")
async def pools(manager: Manager) -> dict[str, Any]:
    """Stats of every pool, same keys for every backend, plus its health."""
    return {"pools": manager.get_pool_stats()}
