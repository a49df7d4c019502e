"""The database pool behind a real PgBouncer in transaction pooling mode.

One ``pgbouncer`` per module (:mod:`tests.helpers.pgbouncer`), on a free
loopback port in front of the shared PostgreSQL, with fewer server connections
(4) than the pool opens client connections (20): PgBouncer then gives each
transaction whichever server connection is free, which is what breaks named
prepared statements. The same load of 1,000 concurrent leases runs with and
without the ``transaction`` profile.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from resync.core.exceptions import DatabaseError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from resync.core.pools.manager.specs import build_pool, pool_specs
from resync.settings import Settings
from tests.conftest import PG_URL
from tests.helpers.pgbouncer import PgBouncer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

LEASES = 1000
CLIENT_CONNECTIONS = 20
SERVER_CONNECTIONS = 4


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    shared = make_url(PG_URL)
    with PgBouncer(
        pool_mode="transaction",
        server_port=shared.port or 5432,
        database=shared.database or "test",
        user=shared.username or "postgres",
        default_pool_size=SERVER_CONNECTIONS,
    ) as server:
        yield server


@pytest.fixture
async def table() -> AsyncIterator[str]:
    """A fresh ``(n int, label text)`` table on the shared server, dropped afterwards."""
    name = f"bouncer_{uuid.uuid4().hex[:12]}"
    shared = make_url(PG_URL)
    conn = await asyncpg.connect(
        host=shared.host,
        port=shared.port or 5432,
        user=shared.username,
        password=shared.password,
        database=shared.database,
    )
    try:
        await conn.execute(f"CREATE TABLE {name} (n int, label text)")
        yield name
        await conn.execute(f"DROP TABLE IF EXISTS {name}")
    finally:
        await conn.close()


@dataclass
class Outcome:
    """What a load of leases did: failures by message, server backends seen."""

    failures: list[BaseException] = field(default_factory=list)
    server_pids: set[int] = field(default_factory=set)
    wrong_answers: int = 0


async def run_leases(pool: DatabaseConnectionPool, table: str) -> Outcome:
    """LEASES concurrent leases, each running three parameterized statements
    (two reads, one write) -- the same statements again and again, so a
    statement cache would reuse what it prepared in an earlier transaction."""
    outcome = Outcome()

    async def one(n: int) -> None:
        try:
            async with pool.get_connection() as session:
                doubled = await session.scalar(text("SELECT CAST(:n AS int) * 2"), {"n": n})
                label = await session.scalar(
                    text("SELECT CAST(:prefix AS text) || CAST(:n AS int)"),
                    {"prefix": "row-", "n": n},
                )
                await session.execute(
                    text(f"INSERT INTO {table} (n, label) VALUES (:n, :label)"),
                    {"n": n, "label": label},
                )
                outcome.server_pids.add(await session.scalar(text("SELECT pg_backend_pid()")))
                if doubled != 2 * n or label != f"row-{n}":
                    outcome.wrong_answers += 1
        except Exception as exc:
            outcome.failures.append(exc)

    await asyncio.gather(*(one(n) for n in range(LEASES)))
    return outcome


def make_pool(bouncer: PgBouncer, **options: object) -> DatabaseConnectionPool:
    config = ConnectionPoolConfig(
        pool_name="bouncer",
        min_size=CLIENT_CONNECTIONS,
        max_size=CLIENT_CONNECTIONS,
        connection_timeout=60.0,
    )
    return DatabaseConnectionPool(config, bouncer.url(), **options)


async def rows(pool: DatabaseConnectionPool, table: str) -> int:
    async with pool.get_connection() as session:
        return int(await session.scalar(text(f"SELECT count(*) FROM {table}")))


async def test_transaction_profile_serves_1000_concurrent_leases_without_statement_errors(
    bouncer: PgBouncer, table: str
) -> None:
    async with make_pool(bouncer, pgbouncer="transaction") as pool:
        outcome = await run_leases(pool, table)
        assert outcome.failures == []
        assert outcome.wrong_answers == 0
        assert await rows(pool, table) == LEASES
        # The load really was multiplexed: 20 client connections shared at
        # most 4 server backends, transaction by transaction.
        assert pool.stats.connection_creations >= CLIENT_CONNECTIONS
        assert 1 <= len(outcome.server_pids) <= SERVER_CONNECTIONS
        assert pool.get_stats_snapshot()["details"]["pgbouncer"] == "transaction"


async def test_without_the_profile_named_statements_break_under_transaction_pooling(
    bouncer: PgBouncer, table: str
) -> None:
    async with make_pool(bouncer) as pool:
        outcome = await run_leases(pool, table)
    assert outcome.failures, "expected PgBouncer to lose asyncpg's named statements"
    for failure in outcome.failures:
        assert isinstance(failure, DatabaseError)
        message = str(failure)
        assert 'prepared statement "__asyncpg_stmt_' in message
        assert "does not exist" in message or "already exists" in message


async def test_settings_select_the_profile(bouncer: PgBouncer) -> None:
    settings = Settings(DATABASE_URL=bouncer.url(), DB_POOL_PGBOUNCER="transaction")
    spec = pool_specs(settings)[0]
    assert spec.options == {"pgbouncer": "transaction", "statement_timeout": 30.0}
    pool = build_pool(spec)
    assert isinstance(pool, DatabaseConnectionPool)
    async with pool:
        async with pool.get_connection() as session:
            assert await session.scalar(text("SELECT CAST(:n AS int) + 1"), {"n": 41}) == 42
        assert pool.get_stats_snapshot()["details"]["pgbouncer"] == "transaction"
