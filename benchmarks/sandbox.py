"""Test isolation on PostgreSQL, three ways: the resync sandbox, truncation, a database per test.

    python -m benchmarks.sandbox [--tests 300] [--tables 2,20] [--out artifacts/sandbox.md]

Writes a throwaway pytest project and runs it once per mode, in a subprocess,
on the PostgreSQL at ``RESYNC_TEST_PG_URL`` (default 127.0.0.1:5432, user
``postgres``). Every test is the same: through the plugin's ``resync_manager``
(a manager per test, as the fixture gives), insert one user with the *same*
unique e-mail as every other test plus three orders, commit, and read them back
with a join in a second lease. The same key in every test is what makes
isolation necessary; the modes differ only in how it is had:

- ``sandbox``: ``resync_sandbox = true`` in the ini -- each test's leases run in
  one transaction, rolled back at the end;
- ``truncate``: after each test, ``TRUNCATE`` every table of the schema through
  the test's own pool (no extra connection) -- a truncating fixture cannot know
  which tables a test wrote, so it names them all: ``--tables`` sets how many
  the schema has (the tests write two; the rest stand for the rest of an
  application's schema);
- ``database per test``: ``CREATE DATABASE ... TEMPLATE`` (schema in the
  template) before each test, ``DROP DATABASE ... WITH (FORCE)`` after;
- ``no isolation`` (the floor): a unique e-mail per test, rows left behind.

The time is pytest's own session time (collection included, interpreter
start-up not), one run per mode and schema size on a shared 2-core machine;
"isolation per test" is a mode's time less the floor's, per test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import asyncpg

PG_URL = os.environ.get("RESYNC_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
SERVER = PG_URL.replace("+asyncpg", "").rsplit("/", 1)[0]

SCHEMA = """
CREATE TABLE bench_users (id serial PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TABLE bench_orders (
    id serial PRIMARY KEY,
    user_id int NOT NULL REFERENCES bench_users (id),
    total int NOT NULL
);
"""


def schema(tables: int) -> tuple[str, list[str]]:
    """The DDL of a schema of ``tables`` tables (at least the two the tests write)."""
    extra = [f"bench_extra_{i}" for i in range(max(tables - 2, 0))]
    ddl = SCHEMA + "".join(
        f"CREATE TABLE {name} (id serial PRIMARY KEY, note text, at timestamptz);\n"
        for name in extra
    )
    return ddl, ["bench_orders", "bench_users", *extra]


CONFTEST = """
import os
import uuid

import asyncpg
import pytest
from sqlalchemy import text

MODE = os.environ["BENCH_MODE"]
SERVER = os.environ["BENCH_SERVER"]
ASYNC_SERVER = SERVER.replace("postgresql://", "postgresql+asyncpg://")


@pytest.fixture
async def database_url():
    if MODE != "per_test":
        yield ASYNC_SERVER + "/" + os.environ["BENCH_DB"]
        return
    name = "bench_t_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(SERVER + "/postgres")
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {os.environ['BENCH_TEMPLATE']}")
        yield ASYNC_SERVER + "/" + name
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
def resync_settings_overrides(database_url):
    return {"DATABASE_URL": database_url, "DB_POOL_MIN_SIZE": 1, "DB_POOL_MAX_SIZE": 4}


@pytest.fixture
async def truncated(resync_manager):
    yield
    if MODE == "truncate":  # through the test's own pool, before the manager closes
        pool = resync_manager.pool("database")
        async with pool.get_connection() as session:
            tables = os.environ["BENCH_TABLES"]
            await session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
"""

TESTS = """
import os
import uuid

import pytest
from sqlalchemy import text

UNIQUE = os.environ["BENCH_MODE"] == "none"


@pytest.mark.parametrize("n", range({count}))
async def test_orders(resync_manager, truncated, n):
    pool = resync_manager.pool("database")
    email = f"{{uuid.uuid4().hex}}@example.com" if UNIQUE else "same@example.com"
    async with pool.get_connection() as session:
        user = await session.execute(
            text("INSERT INTO bench_users (email) VALUES (:e) RETURNING id"), {{"e": email}}
        )
        uid = user.scalar_one()
        await session.execute(
            text("INSERT INTO bench_orders (user_id, total) VALUES (:u, :t)"),
            [{{"u": uid, "t": t}} for t in (1, 2, 3)],
        )
    async with pool.get_connection() as session:
        found = await session.execute(
            text(
                "SELECT count(*), sum(o.total) FROM bench_orders o "
                "JOIN bench_users u ON u.id = o.user_id WHERE u.email = :e"
            ),
            {{"e": email}},
        )
        assert tuple(found.one()) == (3, 6)
"""

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
addopts = -q -p no:cacheprovider -p no:randomly
"""

MODES = (
    ("sandbox", "resync sandbox"),
    ("truncate", "TRUNCATE after each test"),
    ("per_test", "database per test (CREATE DATABASE ... TEMPLATE)"),
    ("none", "no isolation (unique keys, rows left behind)"),
)


async def _admin(*statements: str, database: str = "postgres") -> None:
    conn = await asyncpg.connect(f"{SERVER}/{database}")
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _run(project: Path, mode: str, env: dict[str, str]) -> tuple[float, float, str]:
    ini = INI + ("resync_sandbox = true\n" if mode == "sandbox" else "")
    (project / "pytest.ini").write_text(ini)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest"],
        cwd=project,
        env={**env, "BENCH_MODE": mode},
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    if done.returncode != 0:
        raise SystemExit(f"mode {mode} failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    match = re.search(r"in ([0-9.]+)s", tail)
    return (float(match.group(1)) if match else wall), wall, tail


def _measure(tests: int, tables: int) -> list[tuple[str, float]]:
    tag = uuid.uuid4().hex[:8]
    template, database = f"bench_tpl_{tag}", f"bench_db_{tag}"
    ddl, names = schema(tables)
    asyncio.run(_admin(f"CREATE DATABASE {template}", f"CREATE DATABASE {database}"))
    results: list[tuple[str, float]] = []
    try:
        asyncio.run(_admin(ddl, database=template))
        asyncio.run(_admin(ddl, database=database))
        env = {
            **os.environ,
            "BENCH_SERVER": SERVER,
            "BENCH_DB": database,
            "BENCH_TEMPLATE": template,
            "BENCH_TABLES": ", ".join(names),
        }
        with tempfile.TemporaryDirectory() as folder:
            project = Path(folder)
            (project / "conftest.py").write_text(textwrap.dedent(CONFTEST))
            (project / "test_bench.py").write_text(TESTS.format(count=tests))
            for mode, label in MODES:
                session, _wall, tail = _run(project, mode, env)
                print(f"{tables} tables, {label}: {session:.2f}s ({tail})", file=sys.stderr)
                results.append((label, session))
    finally:
        asyncio.run(
            _admin(
                f"DROP DATABASE IF EXISTS {template} WITH (FORCE)",
                f"DROP DATABASE IF EXISTS {database} WITH (FORCE)",
            )
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=300)
    parser.add_argument("--tables", default="2,20", help="schema sizes, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("artifacts/sandbox.md"))
    args = parser.parse_args()
    sizes = [int(n) for n in args.tables.split(",")]
    lines = [
        f"# Test isolation on PostgreSQL: {args.tests} tests",
        "",
        "Generated by `python -m benchmarks.sandbox` (one run per mode and schema size, on a",
        "2-core machine shared with other work; PostgreSQL 127.0.0.1). Each test takes a",
        "manager (`resync_manager`), inserts one user with the same unique e-mail as every",
        "other test plus three orders, commits, and reads them back with a join in a second",
        "lease. Session: pytest's session time. Isolation per test: the mode's time less the",
        "floor's (`no isolation`), divided by the test count.",
        "",
    ]
    for tables in sizes:
        results = _measure(args.tests, tables)
        sandbox = results[0][1]
        floor = results[-1][1]
        lines += [
            f"## A schema of {tables} tables",
            "",
            "| isolation | session (s) | per test (ms) | isolation per test (ms) | vs sandbox |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, session in results:
            per_test = session / args.tests * 1000
            extra = (session - floor) / args.tests * 1000
            lines.append(
                f"| {label} | {session:.2f} | {per_test:.1f} | {extra:.1f} "
                f"| {session / sandbox:.2f}x |"
            )
        lines.append("")
    lines += [
        "What each mode pays beyond the floor: the sandbox opens one more connection per",
        "test (the pool's own stay unused) and sends BEGIN, a SAVEPOINT and RELEASE per",
        "lease and the final ROLLBACK, whatever the schema's size; truncation locks and",
        "rewrites every table of the schema after every test, so it grows with the schema",
        "(and a test that fails half-way leaves rows behind until the teardown ran); a",
        "database per test copies the template's files and drops them again.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
