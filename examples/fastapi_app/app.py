"""orders: a FastAPI service of its own, with resync owning its connections.

What it shows, in the order a user adopting resync meets it:

- its own ``FastAPI(title="orders")`` and its own lifespan, inside which
  ``resync_lifespan`` opens the pools (and closes them, draining, at the end);
- resync's operational routes mounted under ``/ops`` (health, metrics, pools),
  with the app's own prometheus-client counter on ``/ops/metrics``;
- ``DBSession`` for the main database, ``OptionalRedis`` for a cache that may
  be down (the route then reads the database), and a second database pool
  named ``reports`` from ``POOLS`` leased through ``pool_lease("reports")``;
- the error contract: a pool that cannot serve answers 503 + Retry-After, a
  failing statement answers 500 with a request id and no SQL or values.

Settings: ``DATABASE_URL`` (PostgreSQL or SQLite), optional ``REDIS_URL``,
optional ``POOLS='{"reports": {"url": "..."}}'`` (without it ``/reports``
answers 503 ``pool_not_configured``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any

import redis.exceptions
from fastapi import FastAPI, HTTPException
from prometheus_client import Counter
from pydantic import BaseModel, Field
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from resync.api import DBSession, OptionalRedis, include_resync_routes, pool_lease, resync_lifespan
from resync.core.exceptions import RedisPoolError
from resync.settings import Settings

__all__ = ["ORDERS_CREATED", "app", "build_app", "orders"]

logger = logging.getLogger("orders")

#: The app's own metric, on prometheus-client's default registry.
ORDERS_CREATED = Counter("orders_created", "Orders created by the orders example")

metadata = MetaData()
orders = Table(
    "example_orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item", String(100), nullable=False),
    Column("quantity", Integer, nullable=False),
)

#: A lease of the second database pool, typed for mypy.
Reports = Annotated[AsyncSession, pool_lease("reports")]

CACHE_TTL = 30
_CACHE_ERRORS = (RedisPoolError, redis.exceptions.RedisError, OSError)


class NewOrder(BaseModel):
    item: str = Field(min_length=1, max_length=100)
    quantity: int = Field(ge=1, le=1000)


class Lookup(BaseModel):
    ref: str = Field(max_length=200)


class Order(BaseModel):
    id: int
    item: str
    quantity: int
    source: str = Field(description="database or cache")


def build_app(settings: Settings | None = None) -> FastAPI:
    """The orders service; ``settings`` default to the process ones, read at start."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with resync_lifespan(app, settings=settings):
            # The app's own start-up, with the pools open.
            manager = app.state.resync_manager
            async with manager.pool("database").get_connection() as session:
                await session.run_sync(lambda sync: metadata.create_all(sync.connection()))
            logger.info("orders ready")
            yield

    app = FastAPI(title="orders", lifespan=lifespan)
    include_resync_routes(app, health=True, metrics=True, pools=True, prefix="/ops")

    @app.post("/orders", response_model=Order, status_code=201)
    async def create_order(body: NewOrder, session: DBSession) -> Order:
        result = await session.execute(
            orders.insert().values(item=body.item, quantity=body.quantity).returning(orders.c.id)
        )
        order_id = int(result.scalar_one())
        await session.commit()
        ORDERS_CREATED.inc()
        return Order(id=order_id, item=body.item, quantity=body.quantity, source="database")

    @app.get("/orders/{order_id}", response_model=Order)
    async def read_order(order_id: int, session: DBSession, cache: OptionalRedis) -> Order:
        key = f"example:orders:{order_id}"
        if cache is not None:  # None while Redis is down: the database answers
            try:
                cached = await cache.get(key)
            except _CACHE_ERRORS:
                cached = None
            if cached is not None:
                return Order(**json.loads(cached), source="cache")
        row = (await session.execute(select(orders).where(orders.c.id == order_id))).first()
        if row is None:
            raise HTTPException(404, f"no order {order_id}")
        data: dict[str, Any] = {"id": row.id, "item": row.item, "quantity": row.quantity}
        if cache is not None:
            with suppress(*_CACHE_ERRORS):
                await cache.set(key, json.dumps(data), ex=CACHE_TTL)
        return Order(**data, source="database")

    @app.post("/orders/lookup")
    async def order_by_ref(body: Lookup, session: DBSession) -> dict[str, Any]:
        # A bug kept on purpose: refs are cast to integer by the database, so
        # a non-numeric ref (a token pasted by mistake) fails on the server,
        # whose message quotes the value. The answer and the logs must not.
        ref = text("CAST(CAST(:ref AS text) AS integer)").bindparams(ref=body.ref)
        row = (await session.execute(select(orders.c.id).where(orders.c.id == ref))).first()
        return {"found": row is not None}

    @app.get("/reports/count")
    async def count_orders(reports: Reports) -> dict[str, int]:
        total = (await reports.execute(select(func.count()).select_from(orders))).scalar_one()
        return {"orders": int(total)}

    return app


app = build_app()
