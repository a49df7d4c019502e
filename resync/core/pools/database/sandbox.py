"""The test sandbox: every database lease of a test on one connection, in one transaction.

A :class:`Sandbox` is made active for a stretch of code (a test) through the
context variable :data:`active_sandbox`, which asyncio copies into every task
created under it (an app called in-process through ``httpx.ASGITransport``, an
``asgi_lifespan.LifespanManager``, the test's own tasks). While it is active,
each lease of a :class:`~resync.core.pools.database.pool.DatabaseConnectionPool`
-- ``get_connection()``, ``connection()``, ``driver_connection()`` -- is served
by the sandbox instead of the pool's stock (the pool's hook is one context
variable read, nothing else when no sandbox is active):

- **one connection per database**: the first lease for a database opens one
  connection through the pool's engine and begins the *outer* transaction on
  it; every later lease for the same database (the same engine URL: pools of
  two managers on one PostgreSQL database share it; each SQLite ``:memory:``
  pool is its own database) runs on that connection;
- **a savepoint per lease**: a session lease is SQLAlchemy's "join a Session
  into an external transaction" recipe (``join_transaction_mode=
  "create_savepoint"``), so ``session.commit()`` and a clean exit release a
  ``SAVEPOINT`` and a rollback or an exception rolls back to it: a failed
  request's writes are gone, a committed one is visible to the next lease. A
  ``connection()`` lease is a :class:`SandboxConnection` whose ``commit()``,
  ``rollback()`` and ``begin()`` act on its own savepoint; a
  ``driver_connection()`` lease is the driver's connection inside a savepoint
  (asyncpg's ``conn.transaction()`` nests as a savepoint);
- **the end**: :meth:`Sandbox.close` rolls the outer transaction back and
  closes the connections -- the database is as it was.

Leases take turns (they share one connection): a lease waits, first come
first served, while another holds the connection, for at most the pool's
``connection_timeout`` (the lease's own remaining budget); then the pool's
timeout error, whose message says the sandbox's connection was busy. A lease
taken by code running *under* a held lease -- the app called in-process while
the test holds ``db_session``, a task created inside an ``async with`` block --
nests inside it (a savepoint inside the holder's) instead of waiting for a
connection its caller will never give back; such nested leases take turns
among themselves the same way. Do not use the outer session while code called
from it runs a lease: both would run on the one connection.

All admission, stats, histograms, leak detection and the breaker stay the
pool's: sandbox leases are kernel leases (:class:`~resync.core.pools.kernel.lease.LeaseKind`)
and hold one of the pool's admission slots while they run; the sandbox's own
connection holds none, so a pool's ``close()`` does not wait for it.

Timeouts, cancellation, close:

- opening the connection, beginning the outer transaction, a savepoint's
  ``RELEASE``/``ROLLBACK TO`` at the end of a lease are all bounded by the
  pool's ``connection_timeout``; past it, or when the connection breaks, the
  sandbox is *broken*: the lease raises
  :class:`~resync.core.exceptions.DatabaseSandboxError` and so does every
  later lease of the test (its writes are still rolled back: closing the
  connection ends the transaction on the server);
- a lease cancelled while waiting for its turn takes nothing; cancelled
  while held, its savepoint is rolled back at release as for an error (the
  cancellation propagates). Cancelled in the middle of a statement,
  SQLAlchemy invalidates the connection (its state is unknown), which breaks
  the sandbox: later leases raise ``DatabaseSandboxError``, and the server
  rolls the transaction back;
- after :meth:`Sandbox.close`, a lease from a task that outlived the test
  raises ``DatabaseSandboxError`` instead of writing outside any sandbox.

What cannot be sandboxed raises ``DatabaseSandboxError`` naming the pool and
the way out (a lease taken inside :func:`outside_sandbox`): a
driver other than asyncpg or aiosqlite, a pool in ``AUTOCOMMIT`` mode, a
statement PostgreSQL refuses inside a transaction block (SQLSTATE 25001:
``CREATE INDEX CONCURRENTLY``, ``VACUUM``, ``CREATE DATABASE``, ``ALTER
SYSTEM`` ...) and a ``COMMIT`` of the outer transaction itself (through
``session.connection()``, ``run_sync``, or the driver: found at the end of
the lease, the test's writes may then be in the database).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, AsyncTransaction

from resync.core.exceptions import DatabaseSandboxError
from resync.core.pools.database.errors import connection_lost, sqlstate_of
from resync.core.pools.database.record import drop_connection, open_connection
from resync.core.pools.kernel.lease import raise_mapped

__all__ = [
    "SANDBOX_HEADER",
    "Sandbox",
    "SandboxConnection",
    "active_sandbox",
    "outside_sandbox",
]


#: The kind of lease a sandbox builds for a pool (see Sandbox._kind).
_K = TypeVar("_K")

logger = logging.getLogger("resync.pool")

#: The sandbox the current context's database leases run in (``None``: none).
active_sandbox: ContextVar[Sandbox | None] = ContextVar("resync_sandbox", default=None)
#: The innermost sandbox lease held in this context (leases under it nest).
_holding: ContextVar[_Turn | None] = ContextVar("resync_sandbox_turn", default=None)

#: The request header naming a sandbox, for a server under test that honours it
#: (``RESYNC_TEST_SANDBOX``; see :mod:`resync.api.sandbox`).
SANDBOX_HEADER = "X-Resync-Sandbox"

_DRIVERS = ("asyncpg", "aiosqlite")
#: SQLSTATE 25001 active_sql_transaction: "cannot run inside a transaction block".
_NOT_IN_A_TRANSACTION = "25001"
_WAY_OUT = (
    "run it outside the sandbox: take the lease inside 'with resync.testing.outside_sandbox():' "
    "(its writes are then real and must be cleaned up)"
)


@contextlib.contextmanager
def outside_sandbox() -> Iterator[None]:
    """Leases taken in this block (and tasks created in it) bypass the sandbox.

    For code that needs a connection of its own: ``LISTEN``, ``CREATE
    DATABASE``, a second session on purpose. What it writes is committed for
    real. Synchronous: no I/O, nothing to time out or cancel.
    """
    token = active_sandbox.set(None)
    try:
        yield
    finally:
        _reset(active_sandbox, token, None)


def _reset(var: ContextVar[Any], token: Token[Any], fallback: object) -> None:
    try:
        var.reset(token)
    except ValueError:  # ended in another context than it began (a fixture's teardown)
        var.set(fallback)


class _Turn:
    """One held sandbox lease: its place on the connection and the turns under it."""

    __slots__ = ("active", "children", "lock", "parent", "room", "token")

    def __init__(self, room: _Room, parent: _Turn | None, lock: asyncio.Lock) -> None:
        self.room = room
        self.parent = parent
        self.lock = lock  # the lock this turn holds (its parent's children, or the room's)
        self.children = asyncio.Lock()  # leases nested under this one take turns here
        self.active = True
        self.token: Token[_Turn | None] | None = None


class _Room:
    """One database's connection in a sandbox, its outer transaction and its turns."""

    def __init__(self, box: Sandbox, key: str, driver: str) -> None:
        self.box = box
        self.key = key
        self.driver = driver
        self.lock = asyncio.Lock()
        self.conn: AsyncConnection | None = None
        self.outer: AsyncTransaction | None = None
        #: Why this room can no longer be trusted (``None``: it can).
        self.broken: str | None = None
        self.pool_name = ""

    async def open(self, engine: AsyncEngine, pool_name: str, timeout: float) -> None:
        """Open the connection and begin the outer transaction within ``timeout``."""
        conn = await open_connection(engine, None, timeout)
        try:
            async with asyncio.timeout(timeout):
                self.outer = await conn.begin()
                # asyncpg's BEGIN waits for the first statement; SQLite's driver
                # sends none before a SELECT or a SAVEPOINT (which would then be
                # outermost, and its RELEASE a COMMIT): begin it for real now.
                await conn.exec_driver_sql("BEGIN" if self.driver == "aiosqlite" else "SELECT 1")
            if not _in_transaction(_driver_of(conn)):
                raise DatabaseSandboxError(
                    f"pool '{pool_name}' runs its connections in AUTOCOMMIT mode, so the test "
                    "sandbox cannot hold its writes in a transaction; drop isolation_level="
                    "'AUTOCOMMIT' from the pool's engine options in tests, or " + _WAY_OUT,
                    pool_name=pool_name,
                )
        except BaseException:
            drop_connection(conn)
            raise
        sync = conn.sync_connection
        assert sync is not None
        event.listen(sync, "commit", self._refuse_commit)
        self.conn = conn
        self.pool_name = pool_name

    def _refuse_commit(self, _conn: Connection) -> None:
        # Nothing of the sandbox's commits the outer transaction: this is a
        # caller's conn.commit() on the shared connection (session.connection(),
        # run_sync ...). Refused before it reaches the server.
        self.broken = (
            "something called commit() on the sandbox's own connection (refused: nothing "
            "was committed)"
        )
        raise DatabaseSandboxError(
            f"a COMMIT of the test sandbox's transaction was refused (pool '{self.pool_name}'): "
            "inside a sandbox, commit through the lease -- leave its block, or call "
            "session.commit() / the leased connection's commit(), which release a savepoint; "
            "code that must really commit needs " + _WAY_OUT,
            pool_name=self.pool_name,
        )

    def intact(self, pool_name: str) -> None:
        """Raise unless the outer transaction is still open and trusted."""
        if self.broken is None:
            conn = self.conn
            outer = self.outer
            if conn is None or outer is None or not outer.is_active:
                self.broken = "its outer transaction ended"
            elif not _in_transaction(_driver_of(conn)):
                self.broken = (
                    "a lease sent COMMIT or ROLLBACK itself, ending its outer transaction "
                    "(what the test wrote before may be in the database now)"
                )
        if self.broken is not None:
            raise DatabaseSandboxError(
                f"the test sandbox of {self.box.name} cannot be used any more: {self.broken} "
                f"(pool '{pool_name}'). Inside a sandbox, leases commit by leaving their block "
                "(or session.commit()), never with COMMIT sent to the driver",
                pool_name=pool_name,
            )

    def fail(self, why: str) -> None:
        if self.broken is None:
            self.broken = why

    async def close(self, timeout: float) -> None:
        """Roll the outer transaction back and close the connection (bounded by
        ``timeout``, then the socket is aborted; cancelled, aborted too)."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        outer, self.outer = self.outer, None
        if conn.invalidated:  # nothing to roll back: abort (the server rolls back)
            drop_connection(conn)
            return
        try:
            async with asyncio.timeout(timeout):
                if outer is not None and outer.is_active:
                    await outer.rollback()
                await conn.close()
        except BaseException as exc:
            drop_connection(conn)  # the server rolls back a closed session
            if not isinstance(exc, Exception):
                raise
            logger.info(
                "test sandbox of %s: closing its connection: %s", self.box.name, type(exc).__name__
            )


def _driver_of(conn: AsyncConnection) -> Any:
    sync = conn.sync_connection
    assert sync is not None
    return sync.connection.driver_connection


def _in_transaction(driver: Any) -> bool:
    check = getattr(driver, "is_in_transaction", None)  # asyncpg
    if callable(check):
        return bool(check())
    return bool(getattr(driver, "in_transaction", False))  # aiosqlite


class Sandbox:
    """One test's database sandbox (see the module docstring).

    Nothing is opened until the first lease; :meth:`activate` makes it the
    current context's sandbox, :meth:`close` rolls everything back. ``name``
    says whose sandbox it is in error messages (the test's node id); ``id`` is
    a random token naming it to a server under test (:meth:`share`).
    """

    def __init__(self, name: str = "this test", *, close_timeout: float = 10.0) -> None:
        self.name = name
        self.id = secrets.token_urlsafe(16)
        self.close_timeout = close_timeout
        self.closed = False
        self._rooms: dict[str, _Room] = {}
        self._kinds: dict[tuple[int, str], Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Servers under test this sandbox was shared with (:meth:`share`).
        self.shared_with: list[str] = []

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Sandbox {self.name} [{state} | {len(self._rooms)} database(s)]>"

    @property
    def databases(self) -> int:
        """How many databases the sandbox holds a connection to."""
        return sum(1 for room in self._rooms.values() if room.conn is not None)

    def share(self, base_url: str) -> dict[str, str]:
        """The header that makes a server under test (``resync serve`` with
        ``RESYNC_TEST_SANDBOX=true``) run a request in a sandbox of this id; the
        pytest plugin ends that sandbox on ``base_url`` when the test ends.

        No I/O here. The server's sandbox is its own (another process, another
        connection): it sees what requests with the header wrote, not what this
        process wrote through its pools.
        """
        url = base_url.rstrip("/")
        if url not in self.shared_with:
            self.shared_with.append(url)
        return {SANDBOX_HEADER: self.id}

    def activate(self) -> Token[Sandbox | None]:
        """Make this the sandbox of the current context (and of tasks created in it)."""
        return active_sandbox.set(self)

    def deactivate(self, token: Token[Sandbox | None]) -> None:
        """Undo :meth:`activate`."""
        _reset(active_sandbox, token, None)

    async def close(self) -> None:
        """Roll back every outer transaction and close the connections.

        Idempotent. Each database gets ``close_timeout`` seconds, then its
        connection is aborted (the server rolls back a closed session);
        cancelled, the remaining connections are aborted and the cancellation
        propagates. Leases after this raise ``DatabaseSandboxError``.
        """
        if self.closed:
            return
        self.closed = True
        rooms = list(self._rooms.values())
        self._rooms.clear()
        try:
            for room in rooms:
                await room.close(self.close_timeout)
        finally:
            for room in rooms:
                if room.conn is not None:  # pragma: no cover - cancelled mid-way
                    drop_connection(room.conn)

    # --- the kinds the pool's hook asks for ---------------------------------------------

    def sessions(
        self,
        pool: Any,
        factory: Callable[..., AsyncSession],
        map_error: Callable[[BaseException], BaseException],
    ) -> SandboxSessions:
        """The ``get_connection()`` kind of ``pool`` inside this sandbox."""
        return self._kind(pool, "session", lambda: SandboxSessions(self, pool, factory, map_error))

    def connections(
        self, pool: Any, map_error: Callable[[BaseException], BaseException]
    ) -> SandboxCore:
        """The ``connection()`` kind of ``pool`` inside this sandbox."""
        return self._kind(pool, "core", lambda: SandboxCore(self, pool, map_error))

    def drivers(
        self, pool: Any, map_error: Callable[[BaseException], BaseException]
    ) -> SandboxDrivers:
        """The ``driver_connection()`` kind of ``pool`` inside this sandbox."""
        return self._kind(pool, "driver", lambda: SandboxDrivers(self, pool, map_error))

    def _kind(self, pool: Any, tag: str, build: Callable[[], _K]) -> _K:
        """The one ``tag`` kind of ``pool`` in this sandbox, built on first use."""
        key = (id(pool), tag)
        kind: _K | None = self._kinds.get(key)
        if kind is None:
            kind = self._kinds[key] = build()
        return kind

    # --- turns ------------------------------------------------------------------------

    def _room_for(self, pool: Any) -> _Room:
        name: str = pool.name
        if self.closed:
            raise DatabaseSandboxError(
                f"a lease of pool '{name}' came after the test sandbox of {self.name} ended "
                "(from a task that outlived its test?); await or cancel such tasks before the "
                "test ends",
                pool_name=name,
            )
        engine: AsyncEngine | None = pool.engine
        assert engine is not None  # the lease checked the pool is ready
        driver = engine.dialect.driver
        if driver not in _DRIVERS:
            raise DatabaseSandboxError(
                f"the test sandbox supports asyncpg and aiosqlite; pool '{name}' uses "
                f"'{driver}'. Use one of those in tests, or " + _WAY_OUT,
                pool_name=name,
            )
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise DatabaseSandboxError(
                f"a lease of pool '{name}' runs on another event loop than the test sandbox "
                f"of {self.name}; run the test and its fixtures on one loop (same loop_scope)",
                pool_name=name,
            )
        key = engine.url.render_as_string(hide_password=True)
        room = self._rooms.get(key)
        if room is None:
            room = self._rooms[key] = _Room(self, key, driver)
        return room

    async def take_turn(self, pool: Any, timeout: float) -> _Turn:
        """Wait (FIFO, at most ``timeout``) for the connection of ``pool``'s database,
        opening it and its outer transaction on first use; nested under the lease
        this context holds, if any. ``TimeoutError`` past ``timeout`` (the pool
        maps it to its timeout error); ``DatabaseSandboxError`` when the sandbox
        cannot serve ``pool``. Cancelled while waiting, it takes nothing."""
        room = self._room_for(pool)
        parent = _holding.get()
        while parent is not None and not (parent.active and parent.room is room):
            parent = parent.parent
        lock = room.lock if parent is None else parent.children
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                await lock.acquire()
        except TimeoutError:
            raise TimeoutError(
                "the test sandbox's connection was held by another lease of this test all "
                "along: leases in a sandbox take turns on one connection"
            ) from None
        try:
            if room.conn is not None or room.broken is not None:
                room.intact(pool.name)
            else:
                await room.open(pool.engine, pool.name, max(deadline - loop.time(), 0.001))
        except BaseException:
            lock.release()
            raise
        turn = _Turn(room, parent, lock)
        turn.token = _holding.set(turn)
        return turn

    def end_turn(self, turn: _Turn) -> None:
        """Give the connection to the next lease waiting for it (no I/O)."""
        turn.active = False
        if turn.token is not None:
            _reset(_holding, turn.token, turn.parent)
        turn.lock.release()

    def map_error(
        self, pool_name: str, error: BaseException, mapper: Callable[[BaseException], BaseException]
    ) -> BaseException:
        """``DatabaseSandboxError`` for a statement that cannot run in a transaction
        block (SQLSTATE 25001), else the pool's ``mapper``."""
        if sqlstate_of(error) == _NOT_IN_A_TRANSACTION:
            mapped = DatabaseSandboxError(
                f"this statement cannot run inside a transaction block, and the test sandbox "
                f"runs every lease inside one (pool '{pool_name}'; CREATE INDEX CONCURRENTLY, "
                "VACUUM, CREATE DATABASE and the like); " + _WAY_OUT,
                pool_name=pool_name,
            )
            mapped.hides_cause = True
            return mapped
        return mapper(error)

    async def end_savepoint(
        self,
        turn: _Turn,
        pool_name: str,
        timeout: float,
        finish: Callable[[bool], Any],
        error: BaseException | None,
    ) -> BaseException | None:
        """Run ``finish(commit)`` under ``timeout``; on a failed commit roll back.

        Returns the commit's error (already rolled back) for the caller to
        raise; breaks the room when the savepoint's fate is unknown.
        """
        room = turn.room
        failure: BaseException | None = None
        try:
            async with asyncio.timeout(timeout):
                if error is None:
                    try:
                        await finish(True)
                    except Exception as exc:
                        failure = exc
                        await finish(False)
                else:
                    await finish(False)
        except BaseException as exc:
            why = "a savepoint could not be ended"
            if isinstance(exc, TimeoutError):
                why = f"a savepoint was not ended within {timeout:g}s"
            elif connection_lost(exc):
                why = "its connection broke"
            room.fail(f"{why} ({type(exc).__name__})")
            if not isinstance(exc, Exception):
                raise
            return failure if failure is not None else exc
        conn = room.conn
        if conn is not None and conn.invalidated:
            # SQLAlchemy invalidates a connection whose statement a cancellation
            # interrupted (or that broke): the outer transaction is gone with it.
            room.fail("its connection was invalidated (a statement cut short or a lost connection)")
        return failure


class SandboxConnection(AsyncConnection):
    """A ``connection()`` lease inside a sandbox: the sandbox's connection, with
    ``commit()``, ``rollback()`` and ``begin()`` working on the lease's own
    savepoint (commit-as-you-go releases it and starts the next one).

    ``close()`` rolls back to the savepoint and leaves the sandbox's
    connection open. Everything else is ``AsyncConnection``'s.
    """

    def __init__(self, shared: AsyncConnection) -> None:
        # Not registered as the proxy of the shared connection (SQLAlchemy
        # hands the last registered one to session.connection()).
        super().__init__(shared.engine)
        self.sync_connection = shared.sync_connection
        self._savepoint: AsyncTransaction | None = None

    async def open_savepoint(self) -> None:
        """Begin this lease's savepoint (the leasing does; call it only after
        :meth:`end_savepoint`)."""
        self._savepoint = await super().begin_nested()

    async def end_savepoint(self, commit: bool) -> None:
        """Release (``commit``) or roll back to this lease's savepoint, if one is open."""
        savepoint, self._savepoint = self._savepoint, None
        if savepoint is not None and savepoint.is_active:
            await (savepoint.commit() if commit else savepoint.rollback())

    async def commit(self) -> None:
        """Release this lease's savepoint and start the next (nothing is committed
        for real: the sandbox's outer transaction holds it)."""
        await self.end_savepoint(True)
        await self.open_savepoint()

    async def rollback(self) -> None:
        """Roll back to this lease's savepoint and start the next."""
        await self.end_savepoint(False)
        await self.open_savepoint()

    def begin(self) -> AsyncTransaction:
        """A savepoint (the sandbox's connection is already in a transaction)."""
        return super().begin_nested()

    async def close(self) -> None:
        """Roll back to this lease's savepoint; the shared connection stays open."""
        await self.end_savepoint(False)


class _Kind:
    __slots__ = ("_map_error", "box", "pool", "timeout")

    def __init__(
        self, box: Sandbox, pool: Any, map_error: Callable[[BaseException], BaseException]
    ) -> None:
        self.box = box
        self.pool = pool
        self.timeout: float = pool.config.connection_timeout
        self._map_error = map_error

    def map_error(self, error: BaseException) -> BaseException:
        """The pool's error for one raised inside the block; a statement that cannot
        run in a transaction block is a ``DatabaseSandboxError``."""
        return self.box.map_error(self.pool.name, error, self._map_error)

    def _raise(self, failure: BaseException) -> None:
        mapped = self.map_error(failure)
        if mapped is failure:
            raise failure
        raise_mapped(mapped, failure)


class SandboxSessions(_Kind):
    """``get_connection()`` inside a sandbox: an ``AsyncSession`` joined to the
    sandbox's transaction with ``join_transaction_mode="create_savepoint"``."""

    __slots__ = ("_factory", "_turns")

    def __init__(
        self,
        box: Sandbox,
        pool: Any,
        factory: Callable[..., AsyncSession],
        map_error: Callable[[BaseException], BaseException],
    ) -> None:
        super().__init__(box, pool, map_error)
        self._factory = factory
        self._turns: dict[AsyncSession, _Turn] = {}

    async def acquire(self, timeout: float) -> AsyncSession:
        """A session on the sandbox's connection, once it is this lease's turn."""
        turn = await self.box.take_turn(self.pool, timeout)
        try:
            session = self._factory(bind=turn.room.conn, join_transaction_mode="create_savepoint")
        except BaseException:
            self.box.end_turn(turn)
            raise
        self._turns[session] = turn
        return session

    async def release(self, session: AsyncSession, error: BaseException | None) -> None:
        """Release the session's savepoint (clean exit) or roll back to it."""
        turn = self._turns.pop(session)

        async def finish(commit: bool) -> None:
            if commit:
                await session.commit()
            else:
                await session.rollback()

        try:
            failure = await self.box.end_savepoint(
                turn, self.pool.name, self.timeout, finish, error
            )
            with contextlib.suppress(Exception):
                await session.close()
            session.bind = session.sync_session.bind = None  # a kept reference is inert
            if not isinstance(error, DatabaseSandboxError):  # that one says it all
                turn.room.intact(self.pool.name)
        finally:
            self.box.end_turn(turn)
        if failure is not None:
            self._raise(failure)
        if error is not None and sqlstate_of(error) == _NOT_IN_A_TRANSACTION:
            self._raise(error)  # the pool maps what the body raised: say why here


class SandboxCore(_Kind):
    """``connection()`` inside a sandbox: a :class:`SandboxConnection`."""

    __slots__ = ("_turns",)

    def __init__(
        self, box: Sandbox, pool: Any, map_error: Callable[[BaseException], BaseException]
    ) -> None:
        super().__init__(box, pool, map_error)
        self._turns: dict[SandboxConnection, _Turn] = {}

    async def acquire(self, timeout: float) -> SandboxConnection:
        """The sandbox's connection inside a new savepoint, once it is this lease's turn."""
        turn = await self.box.take_turn(self.pool, timeout)
        try:
            assert turn.room.conn is not None
            conn = SandboxConnection(turn.room.conn)
            async with asyncio.timeout(timeout):
                await conn.open_savepoint()
        except BaseException:
            self.box.end_turn(turn)
            raise
        self._turns[conn] = turn
        return conn

    async def release(self, conn: AsyncConnection, error: BaseException | None) -> None:
        """Release the lease's savepoint (clean exit) or roll back to it."""
        assert isinstance(conn, SandboxConnection)
        turn = self._turns.pop(conn)
        try:
            failure = await self.box.end_savepoint(
                turn, self.pool.name, self.timeout, conn.end_savepoint, error
            )
            conn.sync_connection = None  # a kept reference is inert
            if not isinstance(error, DatabaseSandboxError):  # that one says it all
                turn.room.intact(self.pool.name)
        finally:
            self.box.end_turn(turn)
        if failure is not None:
            self._raise(failure)


class SandboxDrivers(_Kind):
    """``driver_connection()`` inside a sandbox: the driver's connection inside a
    savepoint, released on a clean exit and rolled back to on an exception."""

    __slots__ = ("_held",)

    def __init__(
        self, box: Sandbox, pool: Any, map_error: Callable[[BaseException], BaseException]
    ) -> None:
        super().__init__(box, pool, map_error)
        self._held: list[tuple[_Turn, AsyncTransaction]] = []

    async def acquire(self, timeout: float) -> Any:
        """The driver connection, inside a savepoint, once it is this lease's turn."""
        turn = await self.box.take_turn(self.pool, timeout)
        try:
            conn = turn.room.conn
            assert conn is not None
            async with asyncio.timeout(timeout):
                savepoint = await conn.begin_nested()
        except BaseException:
            self.box.end_turn(turn)
            raise
        self._held.append((turn, savepoint))
        return _driver_of(conn)

    async def release(self, driver: Any, error: BaseException | None) -> None:
        """Release the lease's savepoint (clean exit) or roll back to it."""
        turn, savepoint = self._held.pop()  # turns nest: the last taken ends first

        async def finish(commit: bool) -> None:
            if savepoint.is_active:
                await (savepoint.commit() if commit else savepoint.rollback())

        try:
            failure = await self.box.end_savepoint(
                turn, self.pool.name, self.timeout, finish, error
            )
            if not isinstance(error, DatabaseSandboxError):  # that one says it all
                turn.room.intact(self.pool.name)
        finally:
            self.box.end_turn(turn)
        if failure is not None:
            self._raise(failure)
