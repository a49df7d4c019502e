"""Credential rotation: ``credentials_provider`` + ``drain()`` on a real server.

The tests own the server: a throwaway PostgreSQL cluster (one per module)
with scram-sha-256 password logins over TCP, where each test creates its own
login roles and changes their passwords mid-run. The pool's URL carries no
password; every login comes from the provider.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime

import asyncpg
import pytest
from sqlalchemy import text

from resync.core.exceptions import DatabaseSetupError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.database.credentials import CredentialsProvider, DatabaseCredentials
from resync.core.pools.db_pool import DatabaseConnectionPool
from tests.helpers.pg_cluster import PgCluster

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ADMIN_PASSWORD = "admin-Pa55"
MakeRole = Callable[[str], Awaitable[str]]


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with PgCluster(password=ADMIN_PASSWORD) as server:
        yield server


@pytest.fixture
async def admin(cluster: PgCluster) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(
        host="127.0.0.1", port=cluster.port, user="postgres", password=ADMIN_PASSWORD
    )
    yield conn
    await conn.close()


@pytest.fixture
async def make_role(admin: asyncpg.Connection) -> AsyncIterator[MakeRole]:
    """Create login roles with a password; all dropped after the test."""
    created: list[str] = []

    async def make(password: str) -> str:
        name = f"app_{uuid.uuid4().hex[:10]}"
        await admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        created.append(name)
        return name

    yield make
    for name in created:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name
        )
        await admin.execute(f"DROP ROLE IF EXISTS {name}")


def pool_for(
    cluster: PgCluster,
    user: str,
    provider: CredentialsProvider,
    *,
    min_size: int = 4,
    max_size: int = 4,
) -> DatabaseConnectionPool:
    config = ConnectionPoolConfig(
        pool_name="rotating",
        min_size=min_size,
        max_size=max_size,
        connection_timeout=10.0,
        max_lifetime=0,
        idle_timeout=0,
    )
    # No password in the URL: every login comes from the provider.
    return DatabaseConnectionPool(
        config, cluster.url(user=user, password=""), credentials_provider=provider
    )


async def backend_starts(admin: asyncpg.Connection, pool: DatabaseConnectionPool) -> list[datetime]:
    rows = await admin.fetch(
        "SELECT backend_start FROM pg_stat_activity WHERE application_name = $1",
        pool.application_name,
    )
    return [row["backend_start"] for row in rows]


async def test_rotation_then_drain_moves_every_connection_to_the_new_password_with_no_failure(
    cluster: PgCluster, admin: asyncpg.Connection, make_role: MakeRole
) -> None:
    current = {"password": "old-Pa55"}
    role = await make_role(current["password"])

    async def provider() -> DatabaseCredentials:  # e.g. a secret manager lookup
        await asyncio.sleep(0)
        return DatabaseCredentials(password=current["password"])

    pool = pool_for(cluster, role, provider)
    await pool.initialize()
    try:
        stop = asyncio.Event()
        failures: list[BaseException] = []
        done = 0

        async def worker() -> None:
            nonlocal done
            while not stop.is_set():
                try:
                    async with pool.get_connection() as session:
                        await session.execute(text("SELECT pg_sleep(0.002)"))
                    done += 1
                except Exception as exc:
                    failures.append(exc)

        # Twice as many workers as connections: every connection is busy and
        # callers queue, through the rotation and the drain.
        workers = [asyncio.create_task(worker()) for _ in range(8)]
        await asyncio.sleep(0.5)
        await admin.execute(f"ALTER ROLE {role} PASSWORD 'new-Pa55'")  # the old one stops working
        rotated_at = await admin.fetchval("SELECT clock_timestamp()")
        current["password"] = "new-Pa55"
        before_drain = done
        await pool.drain(1.0)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)

        assert failures == []
        # One drain retired every connection (its count is not asserted: it
        # counts those idle or leased at that instant, not those mid-checkout).
        assert pool.get_stats_snapshot()["details"]["replacements"] == 1
        assert done > before_drain > 0  # leases kept flowing through the drain
        # Every connection open now logged in after the rotation, i.e. with
        # the new password (the old one is refused since ALTER ROLE).
        deadline = time.monotonic() + 10
        while True:
            starts = await backend_starts(admin, pool)
            if starts and all(start > rotated_at for start in starts):
                break
            assert time.monotonic() < deadline, f"old connections left: {starts} vs {rotated_at}"
            await asyncio.sleep(0.05)
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(
                host="127.0.0.1", port=cluster.port, user=role, password="old-Pa55"
            )
        async with pool.get_connection() as session:
            assert await session.scalar(text("SELECT current_user")) == role
        assert "old-Pa55" not in pool.scrub("old-Pa55 new-Pa55")
    finally:
        await pool.close()


async def test_provider_is_asked_for_every_new_connection_and_may_change_the_user(
    cluster: PgCluster, admin: asyncpg.Connection, make_role: MakeRole
) -> None:
    first = await make_role("first-Pa55")
    second = await make_role("second-Pa55")
    # Vault-style: each lease of the secret is a new user with its own password.
    issued = {"login": DatabaseCredentials(password="first-Pa55", user=first)}
    pool = pool_for(cluster, "nobody", lambda: issued["login"], min_size=2, max_size=3)
    async with pool:
        assert pool.get_stats_snapshot()["details"]["credential_fetches"] == 2
        async with pool.get_connection() as session:
            assert await session.scalar(text("SELECT current_user")) == first
        issued["login"] = DatabaseCredentials(password="second-Pa55", user=second)
        assert await pool.drain(0.1) == 2
        users = set()
        for _ in range(3):
            async with pool.get_connection() as session:
                users.add(await session.scalar(text("SELECT current_user")))
        assert users == {second}
        assert pool.get_stats_snapshot()["details"]["credential_fetches"] >= 4


async def test_failing_provider_fails_the_start_with_a_setup_error_naming_it(
    cluster: PgCluster,
) -> None:
    def sealed() -> str:
        raise RuntimeError("vault is sealed")

    pool = pool_for(cluster, "app", sealed, min_size=1, max_size=1)
    with pytest.raises(DatabaseSetupError, match="credentials_provider of pool 'rotating' failed"):
        await pool.initialize()
    await pool.close()


async def test_wrong_password_from_the_provider_is_a_setup_error_without_the_password(
    cluster: PgCluster, make_role: MakeRole
) -> None:
    role = await make_role("right-Pa55")
    pool = pool_for(cluster, role, lambda: "wrong-Pa55-xyz", min_size=1, max_size=1)
    with pytest.raises(DatabaseSetupError) as caught:
        await pool.initialize()
    await pool.close()
    assert "password authentication failed" in str(caught.value)
    assert "wrong-Pa55-xyz" not in str(caught.value)
