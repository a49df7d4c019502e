"""Map resync's errors to HTTP answers with a JSON body that says what to do.

- pool timeout / overloaded / circuit open / shutting down -> 503 with Retry-After
- pool not configured, manager not running -> 503
- other resync errors (a failed query, an upstream error) -> 502 for the HTTP
  family, 500 otherwise; the detail names the pool, never a secret.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from resync.core.exceptions import (
    BackendUnavailableError,
    ManagerError,
    PoolClosedError,
    PoolNotInitializedError,
    PoolOverloadedError,
    PoolTimeoutError,
    ResyncError,
    TWSConnectionError,
)
from resync.core.redact import mask_url

__all__ = ["install_error_handlers"]

logger = logging.getLogger("resync.api")


def _retry_after(exc: ResyncError, request: Request) -> int:
    if isinstance(exc, BackendUnavailableError):
        manager = getattr(request.app.state, "resync_manager", None)
        pool = manager.pools.get(exc.pool_name or "") if manager is not None else None
        breaker = getattr(pool, "circuit_breaker", None)
        if breaker is not None:
            return max(1, math.ceil(float(breaker.retry_after())))
    if isinstance(exc, PoolClosedError):
        return 5
    return 1


def _classify(exc: ResyncError) -> tuple[int, str]:
    if isinstance(exc, PoolTimeoutError):
        return 503, "pool_timeout"
    if isinstance(exc, PoolOverloadedError):
        return 503, "pool_overloaded"
    if isinstance(exc, BackendUnavailableError):
        return 503, "backend_unavailable"
    if isinstance(exc, PoolClosedError | PoolNotInitializedError):
        return 503, "shutting_down"
    if isinstance(exc, ManagerError):
        return 503, "pool_not_configured"
    if isinstance(exc, TWSConnectionError):
        return 502, "upstream_error"
    return 500, "backend_error"


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ResyncError)
    status, code = _classify(exc)
    message = mask_url(str(exc))
    headers = {}
    if status == 503:
        headers["Retry-After"] = str(_retry_after(exc, request))
        logger.warning(
            "%s %s -> %d %s: %s", request.method, request.url.path, status, code, message
        )
    else:
        logger.error("%s %s -> %d %s: %s", request.method, request.url.path, status, code, message)
    body = {"error": code, "pool": exc.pool_name, "detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app`` (Starlette picks the closest class in the MRO)."""
    app.add_exception_handler(ResyncError, _handle)
