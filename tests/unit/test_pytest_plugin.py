"""The resync pytest plugin, run on throwaway test files with ``pytester``.

Each test writes a small test module, runs pytest on it in-process (the plugin
is loaded from its ``pytest11`` entry point, as in any project), and reads the
outcome. Deliberately leaky tests fail *inside* pytester, so this suite stays green.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import REDIS_URL
from tests.helpers.upstream import Upstream

pytest_plugins = ["pytester"]

BASE_INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
addopts = --strict-markers -p no:cacheprovider
"""
INI = BASE_INI + "resync_isolation = true\n"

HEADER = """
import asyncio
import pytest
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.testing import InMemoryPool

def make_pool(name="leaky"):
    return InMemoryPool(ConnectionPoolConfig(pool_name=name, min_size=1, max_size=2))
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    return pytester


def run(project: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    project.makepyfile(test_subject=HEADER + source)
    return project.runpytest(*args)


# --- leaks fail the test, naming what leaked and where --------------------------------


def test_a_leaked_task_fails_naming_the_task_and_the_line_that_created_it(
    project: pytest.Pytester,
) -> None:
    result = run(
        project,
        """
async def sleep_forever():
    await asyncio.sleep(3600)

async def test_leaks_a_task():
    asyncio.create_task(sleep_forever())
""",
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_a_task*",
            "resync isolation: this test left 1 thing(s) open:",
            "  - task 'Task-*' running sleep_forever(), waiting at test_subject.py:*",
            "      created at:",
            "        test_subject.py:* in test_leaks_a_task: asyncio.create_task(sleep_forever())",
            "*mark the test @pytest.mark.resync_allow_leaks if the leak is intended.",
        ]
    )


def test_an_open_lease_and_an_unclosed_pool_fail_with_their_creation_sites(
    project: pytest.Pytester,
) -> None:
    result = run(
        project,
        """
async def test_leaks_a_lease_and_a_pool():
    pool = make_pool()
    await pool.initialize()
    lease = pool.get_connection()
    await lease.__aenter__()
""",
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "resync isolation: this test left 2 thing(s) open:",
            "  - open lease on pool 'leaky' (InMemoryPool, ready) held by task *",
            "      acquired at:",
            "        test_subject.py:* in test_leaks_a_lease_and_a_pool: await lease.__aenter__()",
            "  - unclosed pool 'leaky' (InMemoryPool, ready)",
            "      created at:",
            "        test_subject.py:* in test_leaks_a_lease_and_a_pool: pool = make_pool()",
            "        test_subject.py:* in make_pool: return InMemoryPool(*",
        ]
    )


def test_a_task_holding_a_lease_on_an_open_pool_is_three_leaks(project: pytest.Pytester) -> None:
    result = run(
        project,
        """
async def hold(pool):
    async with pool.get_connection():
        await asyncio.sleep(3600)

async def test_leaks_everything():
    pool = make_pool()
    await pool.initialize()
    asyncio.create_task(hold(pool))
    await asyncio.sleep(0.01)
""",
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "resync isolation: this test left 3 thing(s) open:",
            "  - task * running hold(), waiting at test_subject.py:*",
            "  - open lease on pool 'leaky' (InMemoryPool, ready) held by task *",
            "        test_subject.py:* in hold: async with pool.get_connection():",
            "  - unclosed pool 'leaky' (InMemoryPool, ready)",
        ]
    )


def test_a_pool_left_open_by_a_synchronous_test_is_reported(project: pytest.Pytester) -> None:
    result = run(
        project,
        """
def test_opens_in_its_own_loop():
    asyncio.run(make_pool("sync-leak").initialize())

def test_closes_in_its_own_loop():
    async def use():
        async with make_pool("tidy") as pool, pool.get_connection():
            pass
    asyncio.run(use())
""",
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*unclosed pool 'sync-leak' (InMemoryPool, ready)*"])


def test_tasks_are_watched_on_a_module_scoped_loop_too(project: pytest.Pytester) -> None:
    result = run(
        project,
        """
@pytest.mark.asyncio(loop_scope="module")
async def test_first():
    asyncio.create_task(asyncio.sleep(3600))

@pytest.mark.asyncio(loop_scope="module")
async def test_second_starts_clean():
    current = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not current] == []
""",
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_first*", "*running sleep()*"])


# --- what is not a leak -------------------------------------------------------------------


def test_clean_tests_pass_and_tasks_ending_within_the_grace_period_are_fine(
    project: pytest.Pytester,
) -> None:
    result = run(
        project,
        """
async def test_uses_a_pool_properly():
    async with make_pool() as pool, pool.get_connection():
        pass

async def test_leaves_a_task_that_is_about_to_finish():
    asyncio.create_task(asyncio.sleep(0.1))

def test_runs_its_own_event_loop():
    async def main():
        await asyncio.gather(*(asyncio.sleep(0) for _ in range(3)))
    asyncio.run(main())
""",
    )
    result.assert_outcomes(passed=3)


def test_resync_allow_leaks_opts_out_for_all_kinds_or_the_kinds_named(
    project: pytest.Pytester,
) -> None:
    result = run(
        project,
        """
@pytest.mark.resync_allow_leaks
async def test_may_leak_anything():
    await make_pool().initialize()
    asyncio.create_task(asyncio.sleep(3600))

@pytest.mark.resync_allow_leaks("tasks")
async def test_may_leak_tasks_only():
    asyncio.create_task(asyncio.sleep(3600))
    await make_pool("still-checked").initialize()
""",
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*left 1 thing(s) open:", "*unclosed pool 'still-checked'*"])


def test_a_test_that_failed_or_errored_is_not_also_failed_for_its_leaks(
    project: pytest.Pytester,
) -> None:
    result = run(
        project,
        """
async def test_fails_while_holding_things():
    pool = make_pool()
    await pool.initialize()
    assert False, "the real failure"

@pytest.fixture
async def half_made():
    await make_pool().initialize()
    raise RuntimeError("the fixture broke")

async def test_with_a_broken_fixture(half_made):
    pass
""",
    )
    result.assert_outcomes(failed=1, errors=1)
    assert "resync isolation" not in result.stdout.str()


def test_leaked_pools_and_tasks_are_cleaned_up_before_the_next_test(
    project: pytest.Pytester,
) -> None:
    result = run(
        project,
        """
LEFT = []

async def forever():
    await asyncio.sleep(3600)

async def test_leaks():
    pool = make_pool()
    await pool.initialize()
    LEFT.extend([pool, asyncio.create_task(forever())])

def test_next_sees_them_closed():
    pool, task = LEFT
    assert pool.state.value == "closed"
    assert task.cancelled()
""",
    )
    result.assert_outcomes(passed=2, errors=1)


@pytest.mark.resync_allow_leaks("pools")  # the unguarded inner test leaks into this one
def test_the_guards_can_be_turned_off_in_the_ini(project: pytest.Pytester) -> None:
    project.makeini(BASE_INI + "resync_isolation = false\n")
    result = run(project, "async def test_leaks():\n    await make_pool().initialize()\n")
    result.assert_outcomes(passed=1)


# --- the pool manager singleton --------------------------------------------------------------


def test_the_process_wide_manager_is_reset_between_tests(project: pytest.Pytester) -> None:
    result = run(
        project,
        """
from resync.core.pools import pool_manager
from resync.settings import Settings

SEEN = []

async def test_uses_the_singleton(monkeypatch):
    monkeypatch.setattr(pool_manager, "settings", Settings(_env_file=None, DB_POOL_MIN_SIZE=0))
    manager = await pool_manager.get_connection_pool_manager()
    SEEN.append(manager)
    assert manager.pool("database").is_ready

async def test_gets_a_fresh_one():
    assert pool_manager._manager_instance is None
    assert SEEN[0]._shutdown and SEEN[0].pool("database").state.value == "closed"
""",
    )
    result.assert_outcomes(passed=2)


# --- fixtures -----------------------------------------------------------------------------------


def test_resync_settings_come_from_overrides_not_from_the_environment(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DB_POOL_MAX_SIZE", "77")
    project.path.joinpath(".env").write_text("DB_POOL_MIN_SIZE=3\n")
    result = run(
        project,
        """
@pytest.fixture
def resync_settings_overrides():
    return {"DB_POOL_IDLE_TIMEOUT": 12.0, "HTTP_POOL_MAX_SIZE": 5}

def test_defaults_and_fixture_overrides(resync_settings):
    assert resync_settings.DB_POOL_MAX_SIZE == 10 and resync_settings.DB_POOL_MIN_SIZE == 2
    assert resync_settings.DB_POOL_IDLE_TIMEOUT == 12.0

@pytest.mark.resync_settings(HTTP_POOL_MAX_SIZE=9, db_pool_min_size=0)
def test_the_mark_wins(resync_settings):
    assert resync_settings.HTTP_POOL_MAX_SIZE == 9 and resync_settings.DB_POOL_MIN_SIZE == 0

@pytest.mark.resync_settings(DB_POOL_MAX=3)
def test_a_misspelled_setting_is_an_error(resync_settings):
    pass
""",
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*unknown resync setting(s): DB_POOL_MAX*"])


def test_manager_and_db_session_fixtures(project: pytest.Pytester) -> None:
    result = run(
        project,
        """
from sqlalchemy import text

@pytest.mark.resync_settings(DB_POOL_MIN_SIZE=1)
async def test_db_session(resync_manager, db_session):
    assert list(resync_manager.pools) == ["database"]
    assert (await db_session.execute(text("SELECT 1"))).scalar() == 1
    assert resync_manager.pool("database").stats.active_connections == 1

async def test_each_test_gets_its_own_manager(resync_manager):
    assert resync_manager.pool("database").stats.pool_hits == 0
""",
    )
    result.assert_outcomes(passed=2)


def test_redis_and_http_fixtures_need_their_url_and_say_so(project: pytest.Pytester) -> None:
    result = run(
        project,
        """
async def test_redis(redis_client):
    pass

async def test_http(http_client):
    pass
""",
    )
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*redis_client fixture needs the 'redis' pool*set REDIS_URL*",
            "*http_client fixture needs the 'tws_http' pool*set TWS_BASE_URL*",
        ]
    )


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


def test_redis_and_http_fixtures_lease_from_real_servers(
    project: pytest.Pytester, upstream: Upstream
) -> None:
    result = run(
        project,
        f"""
@pytest.mark.resync_settings(REDIS_URL={REDIS_URL!r}, TWS_BASE_URL={upstream.url!r})
async def test_both(redis_client, http_client):
    assert await redis_client.ping()
    assert (await http_client.get("/ok")).status_code == 200
""",
    )
    result.assert_outcomes(passed=1)


def test_the_plugin_loads_from_its_entry_point_and_can_be_disabled(
    project: pytest.Pytester,
) -> None:
    source = "async def test_leaks():\n    await make_pool().initialize()\n"
    project.makepyfile(test_subject=HEADER + source)
    loaded = project.runpytest_subprocess()
    loaded.assert_outcomes(passed=1, errors=1)
    disabled = project.runpytest_subprocess("-p", "no:resync")
    disabled.assert_outcomes(passed=1)


@pytest.mark.resync_allow_leaks("pools")  # the unguarded inner test leaks into this one
def test_by_default_only_tests_using_resync_fixtures_are_guarded(
    project: pytest.Pytester,
) -> None:
    project.makeini(BASE_INI)
    result = run(
        project,
        """
async def test_unrelated_leak_is_not_our_business():
    await make_pool("unrelated").initialize()

async def test_a_resync_test_is_guarded(resync_manager):
    await make_pool("guarded").initialize()
""",
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*unclosed pool 'guarded'*"])
    assert "'unrelated'" not in result.stdout.str()


def test_a_projects_own_fixture_named_like_resyncs_is_not_guarded(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(BASE_INI)  # no resync_isolation opt-in
    pytester.makeconftest(
        """
import pytest

@pytest.fixture
def db_session():
    return "the project's own session"
"""
    )
    result = run(
        pytester,
        """
async def sleep_forever():
    await asyncio.sleep(3600)

async def test_own_fixture_wins_and_is_not_guarded(db_session):
    assert db_session == "the project's own session"
    asyncio.create_task(sleep_forever())  # the project's business, not resync's

async def test_resync_fixture_is_guarded(resync_db_session):
    asyncio.create_task(sleep_forever())
""",
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_resync_fixture_is_guarded*"])
