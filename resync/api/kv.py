"""Example router: a key-value store in the database, with Redis as a read-through cache.

It exists to show the dependencies in use (and the e2e tests drive it):

- ``PUT /api/kv/{key}`` stores the body's ``value`` in the ``resync_kv`` table
  (an upsert), commits, then drops the cached copy, so readers never see the
  old value once the PUT has answered;
- ``GET /api/kv/{key}`` answers from Redis when it can, else reads the
  database and fills the cache for ``CACHE_TTL`` seconds.

Redis is optional: without ``REDIS_URL``, while Redis is down (the
``OptionalRedis`` dependency gives None) or when a command fails (connection
refused or reset, timeout, an error reply), the cache is skipped and the
database answers; a Redis failure only costs the cache (logged), never the
request.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import redis.exceptions
from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, Field
from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from resync.api.deps import DBSession, OptionalRedis
from resync.core.exceptions import RedisPoolError
from resync.core.pools.base_pool import ConnectionPool

__all__ = ["CACHE_TTL", "create_kv_table", "kv_table", "router"]

logger = logging.getLogger("resync.api")

CACHE_TTL = 60
#: What a cache command may raise: resync's mapped errors, redis-py's own
#: (commands on a leased client raise them directly), and socket errors.
CACHE_ERRORS = (RedisPoolError, redis.exceptions.RedisError, OSError)
metadata = MetaData()
kv_table = Table(
    "resync_kv",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

router = APIRouter(prefix="/api/kv", tags=["example"])

KeyPath = Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")


class Item(BaseModel):
    """A stored value."""

    key: str
    value: str
    source: str = Field(description="database or cache")


class NewValue(BaseModel):
    """The body of a PUT."""

    value: str = Field(max_length=100_000)


def _cache_key(key: str) -> str:
    return f"resync:kv:{key}"


async def create_kv_table(pool: ConnectionPool[AsyncSession]) -> None:
    """Create ``resync_kv`` if it does not exist (the service does this at start)."""
    async with pool.get_connection() as session:
        await session.run_sync(lambda sync: metadata.create_all(sync.connection()))


@router.get("/{key}", response_model=Item)
async def read_value(session: DBSession, cache: OptionalRedis, key: str = KeyPath) -> Item:
    """The value of ``key`` (404 if absent); from the cache when it is there."""
    if cache is not None:
        try:
            cached = await cache.get(_cache_key(key))
        except CACHE_ERRORS as exc:
            logger.warning("kv cache read failed, using the database: %s", type(exc).__name__)
            cached = None
        if cached is not None:
            text = cached.decode() if isinstance(cached, bytes) else str(cached)
            return Item(key=key, value=text, source="cache")
    row = (await session.execute(select(kv_table.c.value).where(kv_table.c.key == key))).first()
    if row is None:
        raise HTTPException(status_code=404, detail=f"no value stored under '{key}'")
    value = str(row[0])
    if cache is not None:
        try:
            await cache.set(_cache_key(key), value, ex=CACHE_TTL)
        except CACHE_ERRORS as exc:
            logger.warning("kv cache fill failed: %s", type(exc).__name__)
    return Item(key=key, value=value, source="database")


@router.put("/{key}", response_model=Item)
async def write_value(
    body: NewValue, session: DBSession, cache: OptionalRedis, key: str = KeyPath
) -> Item:
    """Store ``value`` under ``key`` (insert or replace), then drop the cached copy."""
    values = {"key": key, "value": body.value, "updated_at": datetime.now(UTC)}
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(kv_table).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[kv_table.c.key],
        set_={"value": statement.excluded.value, "updated_at": statement.excluded.updated_at},
    )
    await session.execute(statement)
    # Commit before invalidating: a reader between the two would otherwise
    # refill the cache with the old value.
    await session.commit()
    if cache is not None:
        try:
            await cache.delete(_cache_key(key))
        except CACHE_ERRORS as exc:
            logger.warning("kv cache invalidation failed for %r: %s", key, type(exc).__name__)
    return Item(key=key, value=body.value, source="database")
