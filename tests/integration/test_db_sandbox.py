"""The database sandbox of the pytest plugin, run on throwaway test files with ``pytester``.

Each test here creates a table of its own (PostgreSQL or a SQLite file), writes a
small test module that uses it inside the sandbox, runs pytest on it in-process
(xdist runs spawn workers), and then checks the outcome *and* the table from
outside: whatever the inner tests wrote must be gone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import PG_URL

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
addopts = --strict-markers -p no:cacheprovider
"""

HEADER = """
import asyncio
import pytest
from sqlalchemy import text

TABLE = {table!r}
URL = {url!r}

@pytest.fixture
def resync_settings_overrides():
    return {{"DATABASE_URL": URL, "DB_POOL_MIN_SIZE": 1, "DB_POOL_MAX_SIZE": 4,
             "DB_POOL_CONNECT_TIMEOUT": 2}}

async def insert(pool, key, session=None):
    async with pool.get_connection() as session:
        await session.execute(text(f"INSERT INTO {{TABLE}} (k) VALUES (:k)"), {{"k": key}})

async def keys(pool):
    async with pool.get_connection() as session:
        rows = await session.execute(text(f"SELECT k FROM {{TABLE}} ORDER BY k"))
        return list(rows.scalars())
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    return pytester


async def _pg(statement: str) -> int:
    conn = await asyncpg.connect(PG_URL.replace("+asyncpg", ""))
    try:
        return int(await conn.fetchval(statement) or 0)
    finally:
        await conn.close()


@pytest.fixture
def pg_table() -> Iterator[str]:
    """A table ``(k int primary key)`` on the shared PostgreSQL, dropped afterwards.

    The tests here are synchronous: pytester runs the inner session in-process,
    and its event loops must not start inside a running one.
    """
    name = f"sandbox_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg(f"CREATE TABLE {name} (k int PRIMARY KEY)"))
    yield name
    asyncio.run(_pg(f"DROP TABLE IF EXISTS {name}"))


def pg_rows(table: str) -> int:
    return asyncio.run(_pg(f"SELECT count(*) FROM {table}"))


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A SQLite file with a table ``(k int primary key)``: (url, table)."""
    import sqlite3

    path = tmp_path / "sandbox.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE items (k INTEGER PRIMARY KEY)")
    yield f"sqlite+aiosqlite:///{path}", "items"


def sqlite_rows(url: str, table: str) -> int:
    import sqlite3

    with sqlite3.connect(url.removeprefix("sqlite+aiosqlite:///")) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def write(project: pytest.Pytester, url: str, table: str, source: str) -> None:
    project.makepyfile(test_subject=HEADER.format(table=table, url=url) + source)


SAME_KEY_TWICE = """
@pytest.mark.resync_sandbox
async def test_first(resync_manager):
    pool = resync_manager.pool("database")
    await insert(pool, 1)
    assert await keys(pool) == [1]

async def test_second(resync_manager, resync_sandbox):
    pool = resync_manager.pool("database")
    await insert(pool, 1)
    assert await keys(pool) == [1]
"""


# --- isolation: each test in its own transaction, rolled back --------------------------


@pytest.mark.postgres
def test_two_tests_inserting_the_same_unique_key_both_pass_and_leave_nothing(
    project: pytest.Pytester, pg_table: str
) -> None:
    write(project, PG_URL, pg_table, SAME_KEY_TWICE)
    result = project.runpytest()
    result.assert_outcomes(passed=2)
    assert pg_rows(pg_table) == 0


def test_on_a_sqlite_file_too(project: pytest.Pytester, sqlite_file: tuple[str, str]) -> None:
    url, table = sqlite_file
    write(project, url, table, SAME_KEY_TWICE)
    result = project.runpytest()
    result.assert_outcomes(passed=2)
    assert sqlite_rows(url, table) == 0


def test_on_sqlite_memory_the_app_creates_its_tables_inside_the_sandbox(
    project: pytest.Pytester,
) -> None:
    write(
        project,
        "sqlite+aiosqlite:///:memory:",
        "memo",
        """
@pytest.mark.resync_sandbox
async def test_ddl_and_rows(resync_manager):
    pool = resync_manager.pool("database")
    async with pool.get_connection() as session:
        await session.execute(text("CREATE TABLE memo (k INTEGER PRIMARY KEY)"))
    await insert(pool, 1)
    assert await keys(pool) == [1]

async def test_unsandboxed_sees_no_table(resync_manager):
    pool = resync_manager.pool("database")
    async with pool.get_connection() as session:
        found = await session.execute(text("SELECT name FROM sqlite_master WHERE name='memo'"))
        assert found.first() is None
""",
    )
    project.runpytest().assert_outcomes(passed=2)


@pytest.mark.postgres
def test_the_ini_switch_sandboxes_every_async_test_and_db_session_too(
    project: pytest.Pytester, pg_table: str
) -> None:
    project.makeini(INI + "resync_sandbox = true\n")
    write(
        project,
        PG_URL,
        pg_table,
        """
async def test_one(resync_manager, db_session):
    await db_session.execute(text(f"INSERT INTO {TABLE} (k) VALUES (7)"))
    await db_session.commit()
    # a lease of code called under the held db_session nests inside it
    assert await keys(resync_manager.pool("database")) == [7]

async def test_two(resync_manager):
    await insert(resync_manager.pool("database"), 7)

def test_sync_tests_are_left_alone():
    pass
""",
    )
    project.runpytest().assert_outcomes(passed=3)
    assert pg_rows(pg_table) == 0


# --- the app under test, tasks, concurrency ---------------------------------------------


APP = """
import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, HTTPException
from resync.api import DBSession, resync_lifespan

def make_app(manager):
    app = FastAPI(lifespan=lambda app: resync_lifespan(app, manager=manager))

    @app.post("/items/{key}")
    async def add(key: int, session: DBSession) -> dict:
        await session.execute(text(f"INSERT INTO {TABLE} (k) VALUES (:k)"), {"k": key})
        return {"stored": key}

    @app.post("/broken/{key}")
    async def broken(key: int, session: DBSession) -> dict:
        await session.execute(text(f"INSERT INTO {TABLE} (k) VALUES (:k)"), {"k": key})
        raise HTTPException(status_code=409, detail="refused after the write")

    @app.get("/items")
    async def items(session: DBSession) -> list:
        return list((await session.execute(text(f"SELECT k FROM {TABLE} ORDER BY k"))).scalars())

    return app

async def call(app):
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://test")
"""


@pytest.mark.postgres
def test_a_failed_request_leaves_nothing_and_a_committed_one_is_seen_by_the_next(
    project: pytest.Pytester, pg_table: str
) -> None:
    write(
        project,
        PG_URL,
        pg_table,
        APP
        + """
@pytest.mark.resync_sandbox
async def test_requests(resync_manager):
    app = make_app(resync_manager)
    async with LifespanManager(app), await call(app) as client:
        assert (await client.post("/items/1")).status_code == 200
        assert (await client.post("/broken/2")).status_code == 409
        assert (await client.get("/items")).json() == [1]
    # the test body sees what the app committed, in the same transaction
    assert await keys(resync_manager.pool("database")) == [1]

@pytest.mark.resync_sandbox
async def test_next_test_starts_empty(resync_manager):
    assert await keys(resync_manager.pool("database")) == []
""",
    )
    project.runpytest().assert_outcomes(passed=2)
    assert pg_rows(pg_table) == 0


@pytest.mark.postgres
def test_an_app_with_its_own_manager_shares_the_tests_transaction(
    project: pytest.Pytester, pg_table: str
) -> None:
    write(
        project,
        PG_URL,
        pg_table,
        APP
        + """
from resync.core.pools.pool_manager import ConnectionPoolManager

@pytest.mark.resync_sandbox
async def test_two_managers_one_database(resync_manager, resync_settings):
    await insert(resync_manager.pool("database"), 5)  # written by the test ...
    app = make_app(ConnectionPoolManager(resync_settings, check_budget_on_start=False))
    async with LifespanManager(app), await call(app) as client:
        assert (await client.get("/items")).json() == [5]  # ... read by the app
        assert (await client.post("/items/6")).status_code == 200
    assert await keys(resync_manager.pool("database")) == [5, 6]
""",
    )
    project.runpytest().assert_outcomes(passed=1)
    assert pg_rows(pg_table) == 0


@pytest.mark.postgres
def test_a_task_spawned_by_the_test_uses_the_sandbox(
    project: pytest.Pytester, pg_table: str
) -> None:
    write(
        project,
        PG_URL,
        pg_table,
        """
from resync.testing import outside_sandbox

@pytest.mark.resync_sandbox
async def test_task(resync_manager):
    pool = resync_manager.pool("database")
    await asyncio.create_task(insert(pool, 3))
    await asyncio.gather(*(asyncio.create_task(insert(pool, k)) for k in (10, 11, 12)))
    assert await keys(pool) == [3, 10, 11, 12]
    with outside_sandbox():  # a connection of its own: sees nothing uncommitted
        assert await keys(pool) == []
""",
    )
    project.runpytest().assert_outcomes(passed=1)
    assert pg_rows(pg_table) == 0


@pytest.mark.postgres
def test_concurrent_leases_take_turns_and_a_stuck_one_times_out_naming_the_sandbox(
    project: pytest.Pytester, pg_table: str
) -> None:
    write(
        project,
        PG_URL,
        pg_table,
        """
from resync.core.exceptions import DatabasePoolTimeoutError

@pytest.mark.resync_settings(DB_POOL_CONNECT_TIMEOUT=0.5)
@pytest.mark.resync_sandbox
async def test_turns(resync_manager):
    pool = resync_manager.pool("database")
    order = []
    held = asyncio.Event()

    async def holder():
        async with pool.get_connection() as session:
            await session.execute(text("SELECT 1"))
            held.set()
            await asyncio.sleep(0.2)
            order.append("holder")

    async def waiter():
        await held.wait()
        async with pool.get_connection():
            order.append("waiter")

    await asyncio.gather(holder(), waiter())
    assert order == ["holder", "waiter"]

    release = asyncio.Event()
    async def stuck():
        async with pool.get_connection() as session:
            await session.execute(text("SELECT 1"))
            held.set()
            await release.wait()

    held.clear()
    task = asyncio.create_task(stuck())
    await held.wait()
    with pytest.raises(DatabasePoolTimeoutError, match="sandbox's connection was held"):
        async with asyncio.timeout(5):
            await asyncio.create_task(insert(pool, 1))
    release.set()
    await task
""",
    )
    project.runpytest().assert_outcomes(passed=1)
    assert pg_rows(pg_table) == 0


# --- what cannot be sandboxed -----------------------------------------------------------


@pytest.mark.postgres
def test_statements_and_commits_it_cannot_sandbox_are_typed_errors(
    project: pytest.Pytester, pg_table: str
) -> None:
    write(
        project,
        PG_URL,
        pg_table,
        """
from resync.core.exceptions import DatabaseSandboxError

@pytest.mark.resync_sandbox
async def test_vacuum(resync_manager):
    pool = resync_manager.pool("database")
    with pytest.raises(DatabaseSandboxError, match="cannot run inside a transaction block"):
        async with pool.driver_connection() as conn:
            await conn.execute(f"VACUUM {TABLE}")
    with pytest.raises(DatabaseSandboxError, match="outside_sandbox"):
        async with pool.get_connection() as session:
            await session.execute(text(f"CREATE INDEX CONCURRENTLY ON {TABLE} (k)"))
    await insert(pool, 1)  # the sandbox is still fine

@pytest.mark.resync_sandbox
@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")
async def test_commit_of_the_outer_transaction(resync_manager):
    pool = resync_manager.pool("database")
    await insert(pool, 2)
    with pytest.raises(DatabaseSandboxError, match="COMMIT of the test sandbox's transaction"):
        async with pool.get_connection() as session:
            await (await session.connection()).commit()
    with pytest.raises(DatabaseSandboxError, match="cannot be used any more"):
        await insert(pool, 3)

@pytest.mark.resync_sandbox
def test_a_sync_test_cannot_be_sandboxed():
    pass
""",
    )
    result = project.runpytest()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*the resync sandbox needs an async test*"])
    assert pg_rows(pg_table) == 0


@pytest.mark.postgres
def test_core_and_driver_leases_run_in_savepoints_too(
    project: pytest.Pytester, pg_table: str
) -> None:
    write(
        project,
        PG_URL,
        pg_table,
        """
@pytest.mark.resync_sandbox
async def test_kinds(resync_manager):
    pool = resync_manager.pool("database")
    async with pool.connection() as conn:
        await conn.execute(text(f"INSERT INTO {TABLE} (k) VALUES (1)"))
        await conn.commit()  # releases this lease's savepoint, starts the next
        await conn.execute(text(f"INSERT INTO {TABLE} (k) VALUES (2)"))
        await conn.rollback()
        async with conn.begin():
            await conn.execute(text(f"INSERT INTO {TABLE} (k) VALUES (3)"))
    with pytest.raises(RuntimeError):
        async with pool.connection() as conn:
            await conn.execute(text(f"INSERT INTO {TABLE} (k) VALUES (4)"))
            raise RuntimeError("undo")
    async with pool.driver_connection() as conn:
        await conn.execute(f"INSERT INTO {TABLE} (k) VALUES (5)")
        with pytest.raises(RuntimeError):
            async with conn.transaction():  # nests as a savepoint
                await conn.execute(f"INSERT INTO {TABLE} (k) VALUES (6)")
                raise RuntimeError("undo")
    assert await keys(pool) == [1, 3, 5]
""",
    )
    project.runpytest().assert_outcomes(passed=1)
    assert pg_rows(pg_table) == 0


# --- pytest-xdist ---------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.slow
def test_two_xdist_workers_have_independent_sandboxes(
    project: pytest.Pytester, pg_table: str
) -> None:
    write(
        project,
        PG_URL,
        pg_table,
        """
import os

@pytest.mark.parametrize("n", range(6))
@pytest.mark.resync_sandbox
async def test_same_key_everywhere(resync_manager, n):
    pool = resync_manager.pool("database")
    await insert(pool, 1)
    await insert(pool, 100 + n)
    assert await keys(pool) == [1, 100 + n]
    print("worker", os.environ.get("PYTEST_XDIST_WORKER"))
""",
    )
    result = project.runpytest_subprocess("-n", "2", "-s")
    result.assert_outcomes(passed=6)
    assert pg_rows(pg_table) == 0


def test_a_commit_sent_on_a_sqlite_driver_lease_is_found_and_fails_the_sandbox(
    project: pytest.Pytester, sqlite_file: tuple[str, str]
) -> None:
    url, table = sqlite_file
    write(
        project,
        url,
        table,
        """
from resync.core.exceptions import DatabaseSandboxError

@pytest.mark.resync_sandbox
async def test_driver_commit(resync_manager):
    pool = resync_manager.pool("database")
    with pytest.raises(DatabaseSandboxError, match="sent COMMIT or ROLLBACK itself"):
        async with pool.driver_connection() as conn:
            await conn.execute(f"INSERT INTO {TABLE} (k) VALUES (1)")
            await conn.commit()  # aiosqlite's own: ends the sandbox's transaction
    with pytest.raises(DatabaseSandboxError, match="cannot be used any more"):
        await insert(pool, 2)
""",
    )
    project.runpytest().assert_outcomes(passed=1)
    assert sqlite_rows(url, table) == 1  # the commit the sandbox could not stop


@pytest.mark.postgres
def test_an_endpoint_leasing_again_inside_its_dependency_nests(
    project: pytest.Pytester, pg_table: str
) -> None:
    write(
        project,
        PG_URL,
        pg_table,
        APP
        + """
from starlette.middleware.base import BaseHTTPMiddleware

@pytest.mark.resync_sandbox
async def test_nested(resync_manager, resync_db_session):
    await resync_db_session.execute(text(f"INSERT INTO {TABLE} (k) VALUES (1)"))
    app = make_app(resync_manager)

    async def passthrough(request, call_next):
        return await call_next(request)

    app.add_middleware(BaseHTTPMiddleware, dispatch=passthrough)  # runs the app in a task

    @app.get("/twice")
    async def twice(session: DBSession) -> list:
        await session.execute(text(f"INSERT INTO {TABLE} (k) VALUES (2)"))
        return await keys(resync_manager.pool("database"))  # a second lease, nested

    async with LifespanManager(app), await call(app) as client:
        assert (await client.get("/twice")).json() == [1, 2]
""",
    )
    project.runpytest().assert_outcomes(passed=1)
    assert pg_rows(pg_table) == 0


# --- the sandbox itself, without pytester -------------------------------------------------


async def _cancelled_leases(url: str, statement: str | None) -> None:
    """A lease cancelled while waiting for its turn takes nothing; one cancelled while
    held rolls back to its savepoint -- or, cancelled in the middle of ``statement``
    (SQLAlchemy then invalidates the connection), breaks the sandbox. Either way
    nothing stays in the database."""
    from sqlalchemy import text

    from resync.core.exceptions import DatabaseSandboxError
    from resync.core.pools.base_pool import ConnectionPoolConfig
    from resync.core.pools.database.sandbox import Sandbox
    from resync.core.pools.db_pool import DatabaseConnectionPool

    config = ConnectionPoolConfig(pool_name="sbx", min_size=1, max_size=3, connection_timeout=5)
    pool = DatabaseConnectionPool(config, url)
    table = f"sbx_cancel_{uuid.uuid4().hex[:8]}"
    await pool.initialize()
    try:
        async with pool.get_connection() as session:
            await session.execute(text(f"CREATE TABLE {table} (k int PRIMARY KEY)"))
        box = Sandbox("direct")
        token = box.activate()
        try:
            held = asyncio.Event()

            async def hold() -> None:
                async with pool.get_connection() as session:
                    await session.execute(text(f"INSERT INTO {table} (k) VALUES (1)"))
                    held.set()
                    if statement is not None:
                        await session.execute(text(statement))  # cancelled in here
                    await asyncio.sleep(30)  # or in here

            holder = asyncio.create_task(hold())
            await held.wait()
            waiter = asyncio.create_task(pool.get_connection().__aenter__())
            await asyncio.sleep(0.05)
            waiter.cancel()  # cancelled while waiting for its turn
            await asyncio.sleep(0.05)
            holder.cancel()
            await asyncio.gather(holder, waiter, return_exceptions=True)
            assert pool.stats.active_connections == 0
            if statement is None:
                async with pool.get_connection() as session:  # the sandbox is still usable
                    rows = await session.execute(text(f"SELECT count(*) FROM {table}"))
                    assert rows.scalar() == 0
                    await session.execute(text(f"INSERT INTO {table} (k) VALUES (3)"))
            else:
                with pytest.raises(DatabaseSandboxError, match="invalidated"):
                    async with pool.get_connection():
                        pass
        finally:
            box.deactivate(token)
            await box.close()
        async with pool.get_connection() as session:  # rolled back
            rows = await session.execute(text(f"SELECT count(*) FROM {table}"))
            assert rows.scalar() == 0
    finally:
        async with pool.get_connection() as session:
            await session.execute(text(f"DROP TABLE IF EXISTS {table}"))
        await pool.close()


@pytest.mark.postgres
async def test_cancelled_leases_free_their_turn_and_roll_back_their_savepoint_pg() -> None:
    await _cancelled_leases(PG_URL, None)


async def test_cancelled_leases_free_their_turn_and_roll_back_their_savepoint_sqlite(
    tmp_path: Path,
) -> None:
    await _cancelled_leases(f"sqlite+aiosqlite:///{tmp_path}/cancel.db", None)


@pytest.mark.postgres
async def test_a_lease_cancelled_mid_statement_breaks_the_sandbox_and_leaves_nothing() -> None:
    await _cancelled_leases(PG_URL, "SELECT pg_sleep(2)")


@pytest.mark.postgres
async def test_an_autocommit_pool_cannot_be_sandboxed_and_says_so() -> None:
    from resync.core.exceptions import DatabaseSandboxError
    from resync.core.pools.base_pool import ConnectionPoolConfig
    from resync.core.pools.database.sandbox import Sandbox
    from resync.core.pools.db_pool import DatabaseConnectionPool

    config = ConnectionPoolConfig(pool_name="autocommit", min_size=1, max_size=2)
    pool = DatabaseConnectionPool(config, PG_URL, isolation_level="AUTOCOMMIT")
    async with pool:
        box = Sandbox("direct")
        token = box.activate()
        try:
            with pytest.raises(DatabaseSandboxError, match=r"pool 'autocommit' runs .* AUTOCOMMIT"):
                async with pool.get_connection():
                    pass
        finally:
            box.deactivate(token)
            await box.close()
