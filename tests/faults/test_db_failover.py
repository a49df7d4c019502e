"""A read-only ex-primary: SQLSTATE 25006 makes the database pool drain and reconnect.

Two throwaway clusters stand for the old and the new primary; the address the
pool uses (a fault proxy, standing in for a VIP or a DNS name) points at the
old one. The old primary is demoted the way a failover leaves it -- still
reachable, but ``ALTER SYSTEM SET default_transaction_read_only = on`` +
``pg_reload_conf()`` -- and the address moves to the new one. Writers are
busy on every pooled connection when it happens.

(``tests/integration/test_db_replicas.py`` runs the same failover with a real
standby, one writer at a time; this one holds the burst to the survival rules.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from resync.core.exceptions import DatabaseError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.db_pool import DatabaseConnectionPool
from tests.faults.proxy import FaultProxy
from tests.faults.survival import RECOVERY_WINDOW, Survival, token
from tests.helpers.pg_cluster import PgCluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

T = 1.0
WRITERS = 8


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[PgCluster, PgCluster]]:
    """The old and the new primary, started side by side."""
    old, new = PgCluster(), PgCluster()
    try:
        with ThreadPoolExecutor(2) as starting:
            list(starting.map(lambda cluster: cluster.start(), (old, new)))
        yield old, new
    finally:
        old.destroy()
        new.destroy()


async def sql(port: int, *statements: str) -> object:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
    try:
        result: object = None
        for statement in statements:
            result = await conn.fetchval(statement)
        return result
    finally:
        await conn.close()


async def backends(port: int, application_name: str) -> int:
    query = f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application_name}'"
    return int(await sql(port, query))  # type: ignore[call-overload]


async def test_read_only_ex_primary_drains_the_pool_once_and_writes_move_to_the_new_primary(
    clusters: tuple[PgCluster, PgCluster], caplog: pytest.LogCaptureFixture
) -> None:
    old, new = clusters
    for cluster in clusters:
        await sql(cluster.port, "CREATE TABLE writes (token text PRIMARY KEY, port int)")
    caplog.set_level(logging.WARNING, logger="resync.pool")
    with FaultProxy(("127.0.0.1", old.port)) as address:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{address.port}/postgres"
        config = ConnectionPoolConfig(
            pool_name="failover", min_size=4, max_size=4, connection_timeout=T
        )
        pool = DatabaseConnectionPool(config, url, connect_args={"command_timeout": T})
        async with pool:
            survival = Survival(pool)
            written: dict[str, int] = {}

            async def write(session: AsyncSession) -> int:
                value = token()
                port = await session.scalar(
                    text("INSERT INTO writes VALUES (:t, inet_server_port()) RETURNING port"),
                    {"t": value},
                )
                written[value] = int(port)  # type: ignore[arg-type]
                return int(port)  # type: ignore[arg-type]

            assert all(a.result == old.port for a in await survival.leases(WRITERS, write))
            assert await backends(old.port, pool.application_name) == 4

            # The failover: the old primary turns read-only, the address moves.
            await sql(
                old.port,
                "ALTER SYSTEM SET default_transaction_read_only = on",
                "SELECT pg_reload_conf()",
            )
            address.set_target("127.0.0.1", new.port)
            await asyncio.sleep(0.2)  # each old backend applies the reload before its next command
            flipped = time.monotonic()

            burst = await survival.leases(WRITERS, write)
            refused = [a for a in burst if not a.ok]
            assert refused, "no write reached the read-only ex-primary"
            for attempt in refused:
                assert isinstance(attempt.error, DatabaseError)
                assert "read-only transaction" in str(attempt.error)
            details = pool.get_stats_snapshot()["details"]
            assert details["read_only_errors"] == len(refused)
            assert details["replacements"] == 1  # one drain for the whole burst ...
            logged = [r for r in caplog.records if "SQLSTATE 25006" in r.getMessage()]
            assert len(logged) == 1  # ... and one log line

            await survival.recovers(write)
            assert time.monotonic() - flipped <= RECOVERY_WINDOW
            after = await survival.leases(WRITERS, write)
            assert all(a.ok and a.result == new.port for a in after), after

            # Drained: nothing of the pool is left on the old primary.
            deadline = time.monotonic() + 5
            while await backends(old.port, pool.application_name):
                assert time.monotonic() < deadline, "connections left on the ex-primary"
                await asyncio.sleep(0.05)
            assert await backends(new.port, pool.application_name) <= config.max_size
        await address.wait_for_sockets_async(0)
        assert await backends(new.port, pool.application_name) == 0
    # Each write the pool reported as done is on the server it named, once.
    for cluster in clusters:
        rows = await sql(cluster.port, "SELECT count(*) FROM writes")
        assert rows == sum(1 for port in written.values() if port == cluster.port)
