"""The resync pytest plugin: fixtures, and tests that cannot leak into each other.

Loaded automatically through the ``pytest11`` entry point ``resync`` (disable
with ``-p no:resync``). The guards below run for every test when the pytest ini
says ``resync_isolation = true`` (resync's own suite does), and otherwise only
for tests that use one of the fixtures below -- installing resync never starts
failing a project's unrelated tests.

Fixtures:

- ``resync_settings``: a :class:`~resync.settings.Settings` built from defaults
  plus overrides only -- never from the environment or ``.env``. Overrides come
  from the ``resync_settings_overrides`` fixture (override it in a conftest) and
  from ``@pytest.mark.resync_settings(NAME=value, ...)`` (closest mark wins).
- ``resync_manager``: a started :class:`ConnectionPoolManager` on those
  settings, closed (draining) after the test.
- ``db_session``, ``redis_client``, ``http_client``: one lease from that
  manager's "database", "redis" and "tws_http" pool, held for the test. Redis
  and HTTP need ``REDIS_URL`` / ``TWS_BASE_URL``; without them the fixture fails
  saying so. ``db_session`` rolls back what the test did not commit.

Database sandbox (``resync_sandbox`` fixture, ``@pytest.mark.resync_sandbox``, or
``resync_sandbox = true`` in the ini for every async test): for the test's
duration every lease of every database pool -- from the test body, from an app
called in-process (``httpx.ASGITransport``, ``asgi_lifespan``), from tasks the
test creates -- runs on one connection per database inside one transaction,
a savepoint per lease, rolled back at the end (see
:mod:`resync.core.pools.database.sandbox`). ``resync.testing.outside_sandbox()``
opts code out. Synchronous tests are never sandboxed (they run no loop the
sandbox could live on): marking one is an error, the ini switch skips them.
``resync_sandbox.share(base_url)`` gives the header a live ``resync serve``
(``RESYNC_TEST_SANDBOX=true``) honours; the server's sandbox of that id is
ended when the test ends. The manual: ``resync/testing/README.md``.

Guards, around each guarded test:

- the process-wide manager (``get_connection_pool_manager()``) is reset before
  and after;
- the test fails (an error at teardown) if it leaves a pool open, a lease not
  returned, or -- for pytest-asyncio tests -- a task it created still running
  ``resync_leak_grace`` seconds (default 0.5) after it ended. The message names
  each leak and the lines that created it; leaked tasks are cancelled and leaked
  pools closed so the next test starts clean.
  ``@pytest.mark.resync_allow_leaks`` (or ``("tasks", "leases", "pools")`` for
  some kinds only) opts a test out. A test that already failed (in setup or
  call) is not also failed for its leaks.

Tasks are watched on the loop the test runs on, whatever its ``loop_scope``.
Synchronous tests (including ones that call ``asyncio.run`` themselves) get the
pool and lease checks only.
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

from resync.testing.leaks import LeakTracker

if TYPE_CHECKING:
    import httpx
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncSession

    from resync.core.pools.database.sandbox import Sandbox
    from resync.core.pools.pool_manager import ConnectionPoolManager
    from resync.settings import Settings

# Optional: without pytest-asyncio the guards cover pools and leases only.
_asyncio_plugin: Any
try:
    import pytest_asyncio as _asyncio_plugin
except ImportError:  # pragma: no cover
    _asyncio_plugin = None

__all__ = [
    "db_session",
    "http_client",
    "redis_client",
    "resync_manager",
    "resync_sandbox",
    "resync_settings",
    "resync_settings_overrides",
]

_KINDS = {"tasks": "task", "leases": "lease", "pools": "pool"}
_SCOPES = ("function", "class", "module", "package", "session")
_FAILED = pytest.StashKey[bool]()
_MANAGER_MODULE = "resync.core.pools.pool_manager"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "resync_isolation",
        "resync: guard every test (not only those using resync fixtures) against leaked "
        "pools, leases and tasks, and reset the pool manager around it",
        type="bool",
        default=False,
    )
    parser.addini(
        "resync_sandbox",
        "resync: run every async test's database leases in a sandbox (one transaction, "
        "rolled back at the end), as if each used the resync_sandbox fixture",
        type="bool",
        default=False,
    )
    parser.addini(
        "resync_leak_grace",
        "resync: seconds a finished test's tasks get to end before they count as leaked",
        default="0.5",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "resync_allow_leaks(*kinds): this test may leave tasks, leases or pools open "
        "(kinds: 'tasks', 'leases', 'pools'; none = all)",
    )
    config.addinivalue_line(
        "markers", "resync_settings(**overrides): settings for the resync_settings fixture"
    )
    config.addinivalue_line(
        "markers",
        "resync_sandbox: run this test's database leases in one transaction, rolled back "
        "at the end (the resync_sandbox fixture)",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        item.stash[_FAILED] = True
    return report


# --- the guards ------------------------------------------------------------------------


class _Guard:
    """One test's isolation: a tracker, the singleton reset and the verdict."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.item = request.node
        self.tracker = LeakTracker(request.node.nodeid)
        self.grace = float(request.config.getini("resync_leak_grace"))
        self.checked = _checked_kinds(request.node)

    def fail_if_leaked(self) -> None:
        leaks = self.tracker.leaks(self.checked)
        if not leaks:
            return
        if self.item.stash.get(_FAILED, False):
            return  # the test's own failure says more; its leaks are cleaned up all the same
        body = "\n".join(str(leak) for leak in leaks)
        pytest.fail(
            f"resync isolation: this test left {len(leaks)} thing(s) open:\n{body}\n"
            "Close each pool (await pool.close() or 'async with pool'), leave every lease's "
            "'async with' block, and await or cancel each task before the test ends -- or "
            "mark the test @pytest.mark.resync_allow_leaks if the leak is intended.",
            pytrace=False,
        )


def _checked_kinds(item: pytest.Item) -> frozenset[str]:
    kinds = {"task", "lease", "pool"}
    for mark in item.iter_markers("resync_allow_leaks"):
        unknown = [k for k in mark.args if k not in _KINDS]
        if unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: resync_allow_leaks takes 'tasks', 'leases' or 'pools', "
                f"got {', '.join(map(repr, unknown))}"
            )
        kinds -= {_KINDS[k] for k in mark.args} if mark.args else set(kinds)
    return frozenset(kinds)


async def _reset_manager() -> None:
    if _MANAGER_MODULE not in sys.modules:
        return
    from resync.core.pools import pool_manager

    if pool_manager.current_connection_pool_manager() is not None:
        await pool_manager.reset_connection_pool_manager()


def _reset_manager_sync() -> None:
    if _MANAGER_MODULE not in sys.modules:
        return  # never imported: there is no manager to reset
    from resync.core.pools import pool_manager

    if pool_manager.current_connection_pool_manager() is None:
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(pool_manager.reset_connection_pool_manager())
    else:  # a loop runs in this thread (pytest inside an async test): just forget it
        pool_manager.forget_connection_pool_manager()


def _loop_scope(item: pytest.Item) -> str:
    marker = item.get_closest_marker("asyncio")
    scope = None
    if marker is not None:
        scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")
    return str(scope or item.config.getini("asyncio_default_test_loop_scope") or "function")


#: A test is guarded when it uses one of these (directly or through another
#: fixture). The short names ``db_session``, ``redis_client`` and ``http_client``
#: are not here: resync's own aliases of them depend on ``resync_manager``, so
#: they are guarded through it, while a project's own fixture of that name,
#: which overrides the alias, leaves its tests alone.
_RESYNC_FIXTURES = frozenset(
    {
        "resync_settings",
        "resync_manager",
        "resync_sandbox",
        "resync_db_session",
        "resync_redis_client",
        "resync_http_client",
    }
)


def _guarded(request: pytest.FixtureRequest) -> bool:
    if request.config.getini("resync_isolation"):
        return True
    return not _RESYNC_FIXTURES.isdisjoint(request.fixturenames)


@pytest.fixture(autouse=True)
def _resync_isolation(request: pytest.FixtureRequest) -> Iterator[None]:
    if not _guarded(request):
        yield
        return
    if _asyncio_plugin is not None and _asyncio_plugin.is_async_test(request.node):
        # Runs on the test's own loop; set up now, so torn down after the test's fixtures.
        request.getfixturevalue(f"_resync_loop_guard_{_loop_scope(request.node)}")
        yield
        return
    guard = _Guard(request)
    _reset_manager_sync()
    guard.tracker.start()
    try:
        yield
        _reset_manager_sync()
    finally:
        guard.tracker.stop()
    guard.fail_if_leaked()


async def _loop_guard(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    guard = _Guard(request)
    tracker = guard.tracker
    await _reset_manager()
    tracker.start()
    tracker.watch_loop()
    try:
        yield
        await _reset_manager()
        if "task" in guard.checked:
            await tracker.settle(guard.grace)
        try:
            guard.fail_if_leaked()
        finally:
            if guard.checked:
                await tracker.clean_up()
    finally:
        tracker.stop()


def _scoped_loop_guard(scope: str) -> Any:
    # One function per loop scope: pytest-asyncio keeps the loop scope on the function.
    async def guard(request: pytest.FixtureRequest) -> AsyncIterator[None]:
        async for _ in _loop_guard(request):
            yield

    return _asyncio_plugin.fixture(guard, loop_scope=scope, name=f"_resync_loop_guard_{scope}")


if _asyncio_plugin is not None:
    for _scope in _SCOPES:
        globals()[f"_resync_loop_guard_{_scope}"] = _scoped_loop_guard(_scope)

_F = TypeVar("_F", bound=Callable[..., Any])


def _async_fixture(function: _F) -> _F:
    if _asyncio_plugin is not None:
        return cast(_F, _asyncio_plugin.fixture(function))
    return cast(_F, pytest.fixture(function))  # pragma: no cover


# --- the database sandbox ---------------------------------------------------------------


def _is_async(item: pytest.Item) -> bool:
    return _asyncio_plugin is not None and bool(_asyncio_plugin.is_async_test(item))


def _wants_sandbox(request: pytest.FixtureRequest) -> bool:
    """Does this test run in a database sandbox (the fixture, the mark or the ini)?"""
    node = request.node
    if "resync_sandbox" in request.fixturenames or node.get_closest_marker("resync_sandbox"):
        return True
    return bool(request.config.getini("resync_sandbox")) and _is_async(node)


async def _open_sandbox(request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
    from resync.core.pools.database.sandbox import Sandbox

    box = Sandbox(request.node.nodeid)
    token = box.activate()
    try:
        yield box
    finally:
        box.deactivate(token)
        try:
            await _end_shared(box)
        finally:
            await box.close()


async def _end_shared(box: Sandbox) -> None:
    """Tell each server the sandbox was shared with to roll its sandbox back."""
    if not box.shared_with:
        return
    import httpx

    from resync.core.pools.database.sandbox import SANDBOX_HEADER

    async with httpx.AsyncClient(timeout=10.0) as client:
        for base in box.shared_with:
            try:
                await client.delete(f"{base}/_resync/sandbox", headers={SANDBOX_HEADER: box.id})
            except httpx.HTTPError as exc:  # the server idles it out (60 s) instead
                warnings.warn(
                    f"resync sandbox: could not end the sandbox on {base} "
                    f"({type(exc).__name__}); the server rolls it back once idle",
                    stacklevel=1,
                )


def _scoped_sandbox(scope: str) -> Any:
    # On the test's own loop, as the loop guards are (see _scoped_loop_guard).
    async def sandbox(request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
        async for box in _open_sandbox(request):
            yield box

    return _asyncio_plugin.fixture(sandbox, loop_scope=scope, name=f"_resync_sandbox_{scope}")


if _asyncio_plugin is not None:
    for _scope in _SCOPES:
        globals()[f"_resync_sandbox_{_scope}"] = _scoped_sandbox(_scope)


@pytest.fixture
def resync_sandbox(request: pytest.FixtureRequest) -> Sandbox:
    """This test's database sandbox: every database lease on one connection per
    database, inside one transaction rolled back when the test ends.

    Commits inside it release savepoints, rollbacks roll back to them; leases
    take turns on the connection (a lease taken under a held one nests in
    it). ``resync.testing.outside_sandbox()`` opts a block out. Only for async
    (pytest-asyncio) tests.
    """
    if not _is_async(request.node):
        pytest.fail(
            f"{request.node.nodeid}: the resync sandbox needs an async test (pytest-asyncio): "
            "a synchronous test runs no event loop the sandbox's connection could live on; "
            "make the test 'async def' or drop resync_sandbox",
            pytrace=False,
        )
    box: Sandbox = request.getfixturevalue(f"_resync_sandbox_{_loop_scope(request.node)}")
    return box


@pytest.fixture(autouse=True)
def _resync_sandbox_auto(request: pytest.FixtureRequest) -> None:
    # Set up before the test's other function fixtures (autouse ones come
    # first), so a manager or a db_session fixture already leases inside it.
    if _wants_sandbox(request):
        request.getfixturevalue("resync_sandbox")


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def resync_settings_overrides() -> dict[str, Any]:
    """Setting overrides for ``resync_settings``; override this fixture to set your own."""
    return {}


@pytest.fixture
def resync_settings(
    request: pytest.FixtureRequest, resync_settings_overrides: dict[str, Any]
) -> Settings:
    """Settings from defaults and overrides only (no environment, no ``.env``)."""
    from resync.settings import Settings

    values = dict(resync_settings_overrides)
    for mark in reversed(list(request.node.iter_markers("resync_settings"))):
        values.update(mark.kwargs)
    fields = {name.upper(): name for name in Settings.model_fields}
    unknown = sorted(k for k in values if k.upper() not in fields)
    if unknown:
        pytest.fail(f"unknown resync setting(s): {', '.join(unknown)}", pytrace=False)
    chosen = {
        name: field.get_default(call_default_factory=True)
        for name, field in Settings.model_fields.items()
    }
    chosen.update({fields[k.upper()]: v for k, v in values.items()})
    # Every field passed explicitly: the environment cannot override any of them.
    return Settings(_env_file=None, **chosen)


@_async_fixture
async def resync_manager(resync_settings: Settings) -> AsyncIterator[ConnectionPoolManager]:
    """A started pool manager on ``resync_settings``; closed (draining) after the test."""
    from resync.core.pools.pool_manager import ConnectionPoolManager

    manager = ConnectionPoolManager(resync_settings, check_budget_on_start=False)
    await manager.initialize()
    try:
        yield manager
    finally:
        await manager.close_all()


def _pool_of(manager: ConnectionPoolManager, name: str, fixture: str, setting: str) -> Any:
    pool = manager.pools.get(name)
    if pool is None:
        pytest.fail(
            f"the {fixture} fixture needs the '{name}' pool, which these settings do not "
            f"enable: set {setting}, e.g. @pytest.mark.resync_settings({setting}=...)",
            pytrace=False,
        )
    return pool


@_async_fixture
async def resync_db_session(
    resync_manager: ConnectionPoolManager,
) -> AsyncIterator[AsyncSession]:
    """A session leased from the "database" pool; what the test did not commit is rolled back."""
    pool = _pool_of(resync_manager, "database", "resync_db_session", "DATABASE_URL")
    async with pool.get_connection() as session:
        yield session
        await session.rollback()


@_async_fixture
async def resync_redis_client(resync_manager: ConnectionPoolManager) -> AsyncIterator[Redis]:
    """A Redis client leased from the "redis" pool (needs REDIS_URL)."""
    pool = _pool_of(resync_manager, "redis", "resync_redis_client", "REDIS_URL")
    async with pool.get_connection() as client:
        yield client


@_async_fixture
async def resync_http_client(
    resync_manager: ConnectionPoolManager,
) -> AsyncIterator[httpx.AsyncClient]:
    """The upstream HTTP client leased from the "tws_http" pool (needs TWS_BASE_URL)."""
    pool = _pool_of(resync_manager, "tws_http", "resync_http_client", "TWS_BASE_URL")
    async with pool.get_connection() as client:
        yield client


# Short aliases, kept for the tests already written with them. A project's own
# fixture of the same name overrides them (conftest fixtures win over a
# plugin's), and its tests are then not guarded (see _RESYNC_FIXTURES).


@pytest.fixture
def db_session(resync_db_session: AsyncSession) -> AsyncSession:
    """Alias of ``resync_db_session``."""
    return resync_db_session


@pytest.fixture
def redis_client(resync_redis_client: Redis) -> Redis:
    """Alias of ``resync_redis_client``."""
    return resync_redis_client


@pytest.fixture
def http_client(resync_http_client: httpx.AsyncClient) -> httpx.AsyncClient:
    """Alias of ``resync_http_client``."""
    return resync_http_client
