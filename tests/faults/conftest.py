"""Fixtures of the fault suite: proxies in front of the servers, server-side counts.

Pools under test reach their server through a :class:`~tests.faults.proxy.FaultProxy`;
the test itself watches the server directly (never through the proxy), so
what it counts is the truth on the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.faults.proxy import FaultProxy
from tests.faults.survival import OBSERVED


@pytest.fixture
def pg_proxy(pg_url: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of the shared PostgreSQL."""
    url = make_url(pg_url)
    with FaultProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        yield proxy


def proxied_pg_url(pg_url: str, proxy: FaultProxy) -> str:
    """``pg_url`` with its host and port replaced by the proxy's."""
    url = make_url(pg_url).set(host=proxy.host, port=proxy.port)
    return url.render_as_string(hide_password=False)


@pytest.fixture
async def pg_admin(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct asyncpg connection to the shared PostgreSQL, to watch and kill backends."""
    url = make_url(pg_url)
    conn = await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database,
    )
    yield conn
    await conn.close()


async def pg_backends(admin: asyncpg.Connection, application_name: str) -> int:
    """Server-side connections with this ``application_name``."""
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
    return int(await admin.fetchval(sql, application_name))


async def wait_for_pg_backends(
    admin: asyncpg.Connection, application_name: str, expected: int, timeout: float = 5.0
) -> None:
    """Wait until exactly ``expected`` backends carry ``application_name``."""
    deadline = time.monotonic() + timeout
    while (count := await pg_backends(admin, application_name)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{count} server connections of {application_name}, expected {expected}"
            )
        await asyncio.sleep(0.05)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print each fault scenario's worst lease against its bound, and its recovery."""
    if not OBSERVED:
        return
    terminalreporter.section("fault survival: worst lease / bound, recovery")
    for name, seen in sorted(OBSERVED.items()):
        recovery = f"{seen.recovery:.3f}s" if seen.recovery is not None else "-"
        errors = ", ".join(sorted(seen.errors)) or "none"
        terminalreporter.write_line(
            f"{name.rsplit('/', 1)[-1]}: {seen.leases} leases, {seen.failures} failed "
            f"({errors}); worst {seen.worst:.3f}s / bound {seen.bound:.3f}s; "
            f"recovery {recovery}"
        )
