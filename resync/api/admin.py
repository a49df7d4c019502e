"""Admin endpoints: live operations on the pools of a running service.

- ``POST /pools/{name}/drain?interval=<s>``: replace every connection of the
  pool, spread over ``interval`` seconds (default: a second per connection,
  at most 30 s); answers when done with ``{"pool", "replaced", "seconds"}``.
- ``POST /pools/{name}/resize`` with ``{"min_size": a, "max_size": b}``:
  change the pool's sizes now; answers with the new sizes.

They exist only when ``ADMIN_TOKEN`` is set (``create_app`` does not mount
them otherwise, so a deployment without a token answers 404 like for any
unknown path). With a token, every request needs
``Authorization: Bearer <token>``:

- no ``Authorization`` header, or not a Bearer one → **401** with
  ``WWW-Authenticate: Bearer`` (who are you?);
- a Bearer token that is not the admin token → **403** (known scheme, refused);
- the right token: an unknown pool → 404, bad sizes → 422, a pool that is
  closing → 503 (the service's error handlers), else 200.

The token is compared in constant time (``hmac.compare_digest`` of SHA-256
digests, so neither content nor length leaks through timing). It is read
from the header only -- a query-string token would end up in access logs --
and is never logged or echoed: refusals log the path and the client address.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field, SecretStr

from resync.api.deps import Manager
from resync.core.exceptions import PoolConfigError, PoolNotFoundError
from resync.core.pools.base_pool import ConnectionPool
from resync.core.pools.pool_manager import ConnectionPoolManager

__all__ = ["admin_token", "router"]

logger = logging.getLogger("resync.api.admin")

#: Longest drain interval the endpoint accepts (seconds).
MAX_INTERVAL = 600.0


def admin_token(settings: object) -> str | None:
    """The configured admin token (``ADMIN_TOKEN``), or None when admin is off."""
    value: Any = getattr(settings, "ADMIN_TOKEN", None)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value if isinstance(value, str) and value.strip() else None


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def require_admin(request: Request, manager: Manager) -> None:
    """Let the request through only with ``Authorization: Bearer <ADMIN_TOKEN>``."""
    expected = admin_token(manager.settings)
    where = f"{request.method} {request.url.path}"
    client = request.client.host if request.client else "?"
    if expected is None:  # mounted by hand without a token: behave as if absent
        raise HTTPException(status_code=404, detail="Not Found")
    scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not supplied.strip():
        logger.warning("admin: %s from %s refused: no bearer token", where, client)
        raise HTTPException(
            status_code=401,
            detail="admin endpoint: send 'Authorization: Bearer <ADMIN_TOKEN>'",
            headers={"WWW-Authenticate": 'Bearer realm="resync-admin"'},
        )
    if not hmac.compare_digest(_digest(supplied.strip()), _digest(expected)):
        logger.warning("admin: %s from %s refused: wrong token", where, client)
        raise HTTPException(status_code=403, detail="admin endpoint: the token is not accepted")


router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])


def _pool(manager: ConnectionPoolManager, name: str) -> ConnectionPool[Any]:
    try:
        return manager.pool(name)
    except PoolNotFoundError:
        raise HTTPException(
            status_code=404, detail=f"no pool named '{name}'; known: {', '.join(manager.pools)}"
        ) from None


class Sizes(BaseModel):
    """New sizes of a pool."""

    min_size: int = Field(ge=0)
    max_size: int = Field(ge=1)


@router.post("/pools/{name}/drain")
async def drain_pool(
    name: str,
    manager: Manager,
    interval: Annotated[float | None, Query(ge=0, le=MAX_INTERVAL)] = None,
) -> dict[str, Any]:
    """Replace every connection of pool ``name`` without failing a lease.

    Answers once the pool has replaced its idle connections (leased ones are
    replaced when their leases end). If the client goes away, the drain
    stops pacing; connections already marked are still replaced.
    """
    pool = _pool(manager, name)
    started = time.monotonic()
    replaced = await pool.drain(interval)
    seconds = round(time.monotonic() - started, 3)
    logger.info("admin: pool '%s' drained (%d connections, %.3gs)", name, replaced, seconds)
    return {"pool": name, "replaced": replaced, "seconds": seconds}


@router.post("/pools/{name}/resize")
async def resize_pool(name: str, sizes: Sizes, manager: Manager) -> dict[str, Any]:
    """Set ``min_size`` and ``max_size`` of pool ``name`` (422 if min > max)."""
    pool = _pool(manager, name)
    try:
        await pool.resize(sizes.min_size, sizes.max_size)
    except PoolConfigError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    logger.info("admin: pool '%s' resized to min=%d max=%d", name, sizes.min_size, sizes.max_size)
    snapshot = pool.get_stats_snapshot()
    return {
        "pool": name,
        "min_size": snapshot["min_size"],
        "max_size": snapshot["max_size"],
        "capacity": snapshot.get("capacity", snapshot["max_size"]),
    }
