"""PostgreSQL: asyncpg.Pool, psycopg_pool, bare SQLAlchemy and resync, side by side.

Every pool holds 10 connections, all opened before measuring, and waits up
to 30 s for one. Each implementation is used the way its documentation
shows:

- ``asyncpg``: ``async with pool.acquire() as conn`` -- statements run in
  autocommit; on release the pool sends its reset query (one round trip);
- ``psycopg_pool``: ``async with pool.connection() as conn`` -- a transaction
  starts with the first statement and commits on a clean exit;
- ``sqlalchemy``: ``async with Session.begin() as session`` on
  ``create_async_engine(pool_size=10, max_overflow=0)`` -- the unit of work a
  resync lease is (commit on a clean exit, rollback on an error);
- ``sqlalchemy core``: ``async with engine.connect() as conn`` on the same
  engine, ``await conn.commit()`` at the end ("commit as you go"), the Core
  peer of resync's ``pool.connection()``;
- ``resync``: ``async with pool.get_connection() as session`` on a
  ``DatabaseConnectionPool`` (``min_size = max_size = 10``); ``resync core``:
  ``pool.connection()`` (Core ``AsyncConnection``); ``resync driver``:
  ``pool.driver_connection()`` (the ``asyncpg.Connection``, autocommit).

Every connection runs with ``synchronous_commit = off`` (all four sides):
a commit then does not wait for the WAL to reach the disk, so the figures
are the pools' and the server's, not the fsync latency of a disk shared with
whatever else runs on the machine.

Workloads: ``SELECT 1``; a read-modify-write transaction (``SELECT n ... FOR
UPDATE`` then ``UPDATE`` of one of ``COUNTER_ROWS`` counter rows, chosen at
random, committed); and the lease alone (check out, yield once to the loop,
check in -- whatever I/O each pool does on its own for that; for
``sqlalchemy`` an empty ``Session.begin()``, which checks out nothing).

:mod:`benchmarks.pg_roundtrips` counts the round trips of every row here on
the wire (a counting proxy in front of these same pools).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg
import psycopg_pool
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from benchmarks.harness import Op, Row, compare, settle
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool

__all__ = ["PLAN", "run"]

PG_URL = os.environ.get("RESYNC_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
POOL_SIZE = 10
TIMEOUT = 30.0
COUNTER_ROWS = 1000
TABLE = "resync_bench_counter"
SERVER_SETTINGS = {"synchronous_commit": "off"}

IMPLS = (
    "asyncpg",
    "asyncpg no-reset",
    "psycopg_pool",
    "sqlalchemy",
    "sqlalchemy core",
    "resync",
    "resync driver",
    "resync core",
)
#: resync's session lease wraps SQLAlchemy's; its driver lease competes with asyncpg.Pool.
PAIRS = {"resync": "sqlalchemy", "resync driver": "asyncpg", "resync core": "sqlalchemy"}
#: (workload, implementations) in the order they run.
PLAN: list[tuple[str, tuple[str, ...]]] = [
    ("pg SELECT 1", IMPLS),
    ("pg read-modify-write", IMPLS),
    ("lease: pg", IMPLS),
]

_SELECT_1 = text("SELECT 1")
_SELECT_FOR_UPDATE = text(f"SELECT n FROM {TABLE} WHERE id = :id FOR UPDATE")
_UPDATE = text(f"UPDATE {TABLE} SET n = :n WHERE id = :id")


async def _no_reset(connection: Any) -> None:
    """An asyncpg.Pool reset that sends nothing."""


def _plain_dsn(url: str) -> str:
    """The libpq form of the SQLAlchemy URL (asyncpg and psycopg take it)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


class Peers:
    """The four pools, opened on the running loop, and their operations."""

    def __init__(self, url: str = PG_URL) -> None:
        """Every pool to ``url`` (a SQLAlchemy URL; the round-trip count passes its proxy)."""
        dsn = _plain_dsn(url)
        self.dsn = dsn
        self.engine = create_async_engine(
            url,
            pool_size=POOL_SIZE,
            max_overflow=0,
            pool_timeout=TIMEOUT,
            connect_args={"server_settings": SERVER_SETTINGS},
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.psycopg = psycopg_pool.AsyncConnectionPool(
            dsn,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            timeout=TIMEOUT,
            open=False,
            kwargs={"options": " ".join(f"-c {k}={v}" for k, v in SERVER_SETTINGS.items())},
        )
        self.resync = DatabaseConnectionPool(
            ConnectionPoolConfig(
                pool_name="bench-pg",
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                connection_timeout=TIMEOUT,
            ),
            url,
            connect_args={"server_settings": SERVER_SETTINGS},
        )
        self.asyncpg: Any = None
        self.asyncpg_bare: Any = None

    async def open(self) -> None:
        self.asyncpg = await asyncpg.create_pool(
            self.dsn,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            command_timeout=TIMEOUT,
            server_settings=SERVER_SETTINGS,
        )
        # asyncpg.Pool whose release runs no reset (its default sends RESET ALL,
        # UNLISTEN *, CLOSE ALL and pg_advisory_unlock_all() on every release).
        self.asyncpg_bare = await asyncpg.create_pool(
            self.dsn,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            command_timeout=TIMEOUT,
            server_settings=SERVER_SETTINGS,
            reset=_no_reset,
        )
        await self.psycopg.open(wait=True, timeout=TIMEOUT)
        await self.resync.initialize()
        # Open the engine's ten connections too: nobody pays for connecting.
        conns = [await self.engine.connect() for _ in range(POOL_SIZE)]
        for conn in conns:
            await conn.close()
        await self._create_counters()

    async def _create_counters(self) -> None:
        async with self.asyncpg.acquire() as conn:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (id integer PRIMARY KEY, n bigint NOT NULL)"
            )
            await conn.execute(f"TRUNCATE {TABLE}")
            await conn.executemany(
                f"INSERT INTO {TABLE} (id, n) VALUES ($1, 0)",
                [(i,) for i in range(COUNTER_ROWS)],
            )

    async def close(self) -> None:
        await self.resync.close()
        await self.psycopg.close()
        await self.engine.dispose()
        if self.asyncpg is not None:
            async with self.asyncpg.acquire() as conn:
                await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
            await self.asyncpg.close()
        if self.asyncpg_bare is not None:
            await self.asyncpg_bare.close()

    # --- SELECT 1 ----------------------------------------------------------------------

    def select_one(self) -> dict[str, Op]:
        apg, pg3, sessions, pool = self.asyncpg, self.psycopg, self.sessions, self.resync
        engine = self.engine
        bare = self.asyncpg_bare

        async def via_asyncpg() -> object:
            async with apg.acquire() as conn:
                return await conn.fetchval("SELECT 1")

        async def via_psycopg() -> object:
            async with pg3.connection() as conn:
                cur = await conn.execute("SELECT 1")
                return await cur.fetchone()

        async def via_sqlalchemy() -> object:
            async with sessions.begin() as session:
                return (await session.execute(_SELECT_1)).scalar()

        async def via_sqlalchemy_core() -> object:
            async with engine.connect() as conn:
                value = (await conn.execute(_SELECT_1)).scalar()
                await conn.commit()
                return value

        async def via_resync() -> object:
            async with pool.get_connection() as session:
                return (await session.execute(_SELECT_1)).scalar()

        async def via_asyncpg_bare() -> object:
            async with bare.acquire() as conn:
                return await conn.fetchval("SELECT 1")

        async def via_resync_driver() -> object:
            async with pool.driver_connection() as conn:
                return await conn.fetchval("SELECT 1")

        async def via_resync_core() -> object:
            async with pool.connection() as conn:
                return (await conn.execute(_SELECT_1)).scalar()

        return _ops(
            via_asyncpg,
            via_asyncpg_bare,
            via_psycopg,
            via_sqlalchemy,
            via_sqlalchemy_core,
            via_resync,
            via_resync_driver,
            via_resync_core,
        )

    # --- read-modify-write ---------------------------------------------------------------

    def read_modify_write(self) -> dict[str, Op]:
        apg, pg3, sessions, pool = self.asyncpg, self.psycopg, self.sessions, self.resync
        engine = self.engine
        bare = self.asyncpg_bare
        pick = random.randrange
        select_sql = f"SELECT n FROM {TABLE} WHERE id = $1 FOR UPDATE"
        update_sql = f"UPDATE {TABLE} SET n = $2 WHERE id = $1"

        async def via_asyncpg() -> object:
            key = pick(COUNTER_ROWS)
            async with apg.acquire() as conn, conn.transaction():
                n = await conn.fetchval(select_sql, key)
                return await conn.execute(update_sql, key, n + 1)

        async def via_psycopg() -> object:
            key = pick(COUNTER_ROWS)
            async with pg3.connection() as conn:  # commits on a clean exit
                cur = await conn.execute(f"SELECT n FROM {TABLE} WHERE id = %s FOR UPDATE", (key,))
                row = await cur.fetchone()
                assert row is not None
                return await conn.execute(
                    f"UPDATE {TABLE} SET n = %s WHERE id = %s", (row[0] + 1, key)
                )

        async def via_sqlalchemy() -> object:
            key = pick(COUNTER_ROWS)
            async with sessions.begin() as session:
                n = (await session.execute(_SELECT_FOR_UPDATE, {"id": key})).scalar_one()
                return await session.execute(_UPDATE, {"id": key, "n": n + 1})

        async def via_sqlalchemy_core() -> object:
            key = pick(COUNTER_ROWS)
            async with engine.connect() as conn:
                n = (await conn.execute(_SELECT_FOR_UPDATE, {"id": key})).scalar_one()
                result = await conn.execute(_UPDATE, {"id": key, "n": n + 1})
                await conn.commit()
                return result

        async def via_resync() -> object:
            key = pick(COUNTER_ROWS)
            async with pool.get_connection() as session:
                n = (await session.execute(_SELECT_FOR_UPDATE, {"id": key})).scalar_one()
                return await session.execute(_UPDATE, {"id": key, "n": n + 1})

        async def via_asyncpg_bare() -> object:
            key = pick(COUNTER_ROWS)
            async with bare.acquire() as conn, conn.transaction():
                n = await conn.fetchval(select_sql, key)
                return await conn.execute(update_sql, key, n + 1)

        async def via_resync_driver() -> object:
            key = pick(COUNTER_ROWS)
            async with pool.driver_connection() as conn, conn.transaction():
                n = await conn.fetchval(select_sql, key)
                return await conn.execute(update_sql, key, n + 1)

        async def via_resync_core() -> object:
            key = pick(COUNTER_ROWS)
            async with pool.connection() as conn:
                n = (await conn.execute(_SELECT_FOR_UPDATE, {"id": key})).scalar_one()
                return await conn.execute(_UPDATE, {"id": key, "n": n + 1})

        return _ops(
            via_asyncpg,
            via_asyncpg_bare,
            via_psycopg,
            via_sqlalchemy,
            via_sqlalchemy_core,
            via_resync,
            via_resync_driver,
            via_resync_core,
        )

    # --- the lease alone -------------------------------------------------------------------

    def lease_only(self) -> dict[str, Op]:
        apg, pg3, engine, pool = self.asyncpg, self.psycopg, self.engine, self.resync
        bare, sessions = self.asyncpg_bare, self.sessions

        def hold(lease: Callable[[], AbstractAsyncContextManager[object]]) -> Op:
            """Check out, yield to the loop once, check in: nothing else."""

            async def op() -> None:
                async with lease():
                    await asyncio.sleep(0)

            return op

        # In the order of IMPLS; each peer's lease as its docs show it.
        return _ops(
            hold(apg.acquire),
            hold(bare.acquire),
            hold(pg3.connection),
            hold(sessions.begin),
            hold(engine.connect),
            hold(pool.get_connection),
            hold(pool.driver_connection),
            hold(pool.connection),
        )


def _ops(*functions: Op) -> dict[str, Op]:
    return dict(zip(IMPLS, functions, strict=True))


async def run(loop: str, rounds: int, duration: float) -> list[Row]:
    """Every PostgreSQL workload of :data:`PLAN` on the running loop."""
    peers = Peers()
    await peers.open()
    settle()
    rows: list[Row] = []
    try:
        for (workload, _), ops in zip(
            PLAN, (peers.select_one(), peers.read_modify_write(), peers.lease_only()), strict=True
        ):
            backend = "lease" if workload.startswith("lease") else "postgres"
            rows += await compare(
                backend,
                workload,
                ops,
                loop=loop,
                rounds=rounds,
                duration=duration / 2 if backend == "lease" else duration,
                pairs=PAIRS,
            )
    finally:
        await peers.close()
    return rows
