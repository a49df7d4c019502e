"""The database pool: SQLAlchemy ``AsyncSession`` leases over PostgreSQL or SQLite.

The lease path, admission, stats and lifecycle are the base pool's. This
module binds a session to each leased connection and owns what a lease means
for a database: commit or roll back, translate SQLAlchemy errors, set the
engine up and tear it down. Which connection a lease gets, and when one is
pinged, expired or reaped, is :mod:`~resync.core.pools.database.stock`; URL
parsing and engine options are :mod:`~resync.core.pools.database.url`, the
engine's hooks :mod:`~resync.core.pools.database.engine`. The pool composes
the objects that own the rest: :class:`~.stock.ConnectionStock` (its
connections), :class:`~.release.LeaseEnd` (commit or roll back),
:class:`~.replacement.Replacement` (``drain()``, a read-only server) and
:class:`~.topology.Topology` (PgBouncer, replicas, credentials).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from resync.core.deadlines import Deadline
from resync.core.exceptions import (
    DATABASE_ERRORS,
    DatabaseCommitUnknownError,
    DatabaseConnectionLostError,
    DatabaseInvalidTextError,
    DatabaseStatementTimeoutError,
    PoolConfigError,
    ResyncError,
)
from resync.core.pools.database.credentials import CredentialsProvider
from resync.core.pools.database.deadline import deadline_abort
from resync.core.pools.database.driver import DriverLeases, DriverReset
from resync.core.pools.database.engine import create_engine, ping_after
from resync.core.pools.database.errors import (
    client_state_broken,
    describe_sql_error,
    error_chain,
)
from resync.core.pools.database.release import CoreLeases, LeaseEnd
from resync.core.pools.database.replacement import Replacement
from resync.core.pools.database.replicas import ReadLease
from resync.core.pools.database.sandbox import SandboxSessions, active_sandbox
from resync.core.pools.database.stock import HOT_WINDOW, ConnectionStock
from resync.core.pools.database.topology import Topology
from resync.core.pools.database.url import DatabaseTarget, engine_arguments, parse_database_url
from resync.core.pools.kernel.admission import DEFAULT, Priority, PriorityName
from resync.core.pools.kernel.lease import Lease
from resync.core.pools.kernel.pacing import ConnectBackoff
from resync.core.pools.kernel.pool import ConnectionPool, ConnectionPoolConfig, PoolState
from resync.core.redact import mask_url, url_secrets
from resync.core.resilience import (
    BACKEND_BREAKER_DEFAULTS,
    BreakerSpec,
    CircuitBreaker,
    build_circuit_breaker,
)

__all__ = ["DEFAULT_STATEMENT_TIMEOUT", "DatabaseConnectionPool"]

logger = logging.getLogger("resync.pool")

_SELECT_ONE = text("SELECT 1")


#: The liveness rules a pool can be given (``check=``; ``DB_POOL_CHECK`` in settings).
_CHECKS = ("window", "always")

#: Seconds a statement may wait for the server (asyncpg ``command_timeout``).
DEFAULT_STATEMENT_TIMEOUT = 30.0


class DatabaseConnectionPool(ConnectionPool[AsyncSession]):
    """Leases ``AsyncSession`` objects, each bound to one connection held for the lease.

    ``async with pool.get_connection() as session`` checks a connection out
    (within ``connection_timeout``, queue included) and binds a new session to
    it. A clean exit commits; any exception rolls back: SQLAlchemy errors come
    out as ``DatabaseError("Database operation failed: ...")`` (counted in
    ``connection_errors``), other exceptions unchanged. A failing commit raises
    that ``DatabaseError``, or :class:`~resync.core.exceptions.DatabaseCommitUnknownError`
    when the connection was lost with the ``COMMIT`` in flight (the outcome
    is unknown: see :mod:`~resync.core.pools.database.release`); a failing rollback
    is logged, never hides the error that caused it, and the connection is
    discarded. The session is unbound when the lease ends, so a kept
    reference cannot reuse it.

    Statements: a server or network that stops answering holds a statement
    (``COMMIT`` included) as long as the driver waits: ``statement_timeout``
    (default :data:`DEFAULT_STATEMENT_TIMEOUT` = 30 s; ``None`` or 0: no
    limit; ``DB_POOL_STATEMENT_TIMEOUT`` in settings) becomes asyncpg's
    ``command_timeout`` unless ``connect_args`` set one; a statement then raises
    :class:`~resync.core.exceptions.DatabaseStatementTimeoutError` (also a
    ``TimeoutError``) and the connection is aborted at once, not closed
    politely into the silence. The ``ROLLBACK`` the pool sends itself is
    bounded by ``connection_timeout``.

    ``database_url`` is a ``str``, pydantic ``SecretStr`` or SQLAlchemy
    ``URL``; sync driver names are upgraded (``sqlite://`` -> aiosqlite,
    ``postgresql://`` -> asyncpg). A bad URL or driver fails ``initialize()``
    with ``DatabaseSetupError("Failed to setup ...")``. ``engine_options`` go
    to ``create_async_engine`` (``connect_args``, ``echo``, an SSL context,
    asyncpg's ``statement_cache_size`` ...); the pool sets asyncpg's connect
    timeout and a unique ``application_name`` (:attr:`application_name`)
    unless ``connect_args`` do. ``session_options`` go to each ``AsyncSession``
    (``expire_on_commit`` defaults to False: objects stay readable after the
    lease).

    How the config maps onto the engine (it runs ``NullPool``; the connections
    are kept by the pool, see :mod:`~resync.core.pools.database.stock` for why):

    - ``min_size``: opened by ``initialize()`` (at least one, so a bad server
      fails at start) and kept: idle reaping stops at it and lost ones are
      reopened in the background. (``pool_size`` never opens ahead.)
    - ``max_size``: the admission capacity; connections are only opened under
      an admission slot, so at most ``max_size`` are open
      (``pool_size + max_overflow``).
    - ``connection_timeout``: the whole budget of a lease (queue, ping,
      connect: ``pool_timeout``); also asyncpg's connect timeout and SQLite's
      busy timeout unless ``connect_args`` set them.
    - ``idle_timeout``: idle connections above ``min_size`` are closed once
      idle that long, checked every ``min(idle_timeout, max_lifetime) / 4``
      seconds (0.01 to 30 s); ``0`` keeps them. (No SQLAlchemy equivalent.)
    - ``max_lifetime``: each connection expires up to 5% before it, at
      random (``pool_recycle`` without the herd); closed when found idle,
      never under a lease; ``0`` means never.

    Dead connections: a connection used in the last 0.5 s and not suspected
    since is handed out with no I/O (``check="window"``, the default; see
    :mod:`~resync.core.pools.database.stock`), and with asyncpg its ``BEGIN``
    goes with the first statement: if that ``BEGIN`` finds it dead, the lease
    continues on a new connection, unseen. Older connections (and every one
    with ``check="always"``, or with no statement timeout) get the
    transaction's ``BEGIN`` at checkout, the round trip the first statement
    would have made anyway, so every lease proves its connection alive for
    free; one killed by the server or lost to a restart is dropped and
    replaced inside the same lease and the caller never sees it. Pre-ping would cost asyncpg
    three more round trips per lease; invalidate-on-error alone hands the
    first caller after a restart an error. Connections without that hook
    (other drivers, AUTOCOMMIT) are pinged when idle longer than
    ``ping_idle_after`` seconds (default 1; ``pool_pre_ping=True``: always);
    SQLite files are never pinged. A server that stays down gives a typed
    error within ``connection_timeout``.

    SQLite: ``:memory:`` becomes a uniquely named shared-cache memory database
    kept alive by one connection the pool never leases, so every lease sees
    the same database and a discarded connection loses nothing. Shared-cache
    locks do not wait and SQLite has one writer, so such a pool grants one
    lease at a time (reported ``max_size`` 1). File databases run in WAL mode
    with a busy timeout; "database is locked" comes out as a ``DatabaseError``
    naming the pool.

    Deadlines (``resync.deadline()``, a request's ``X-Request-Timeout``): the
    checkout waits at most the time left; at the deadline the lease's
    connection is cut off (asyncpg ``terminate()``), so the statement in
    flight fails at once, nothing is committed, the connection is discarded
    and the lease raises
    :class:`~resync.core.exceptions.DatabaseDeadlineExceededError`; a
    ``COMMIT`` in flight then is ``DatabaseCommitUnknownError``. Why a cut
    and not a statement timeout: :mod:`~resync.core.pools.database.deadline`.

    Cancellation: a lease cancelled while checking out, running a statement,
    committing or rolling back discards its connection (its state is
    unknown; no ``ROLLBACK`` is waited for) and frees its slot.
    ``close()`` drains the leases, then closes every connection and the engine;
    a lease still out after the drain has its connection terminated.

    Circuit breaker (on by default; ``circuit_breaker``: ``True`` for the
    database defaults of :data:`~resync.core.resilience.BACKEND_BREAKER_DEFAULTS`
    -- open after 5 failures in a row, probe after 1 s --, a
    ``CircuitBreakerConfig``, a ``CircuitBreaker``, or ``False``/``None`` for
    none; replicas get a breaker of their own with the same thresholds).
    Failures are what says the server is failing: a connect refused, reset or
    timed out, a login the server turns away, a connection lost under a
    lease. Bad SQL, a constraint violation or any other error the server
    answered with is a success; the caller's own timeout, a queue timeout and
    a cancelled lease are no outcome at all. While open, a lease fails at
    once with :class:`~resync.core.exceptions.DatabaseUnavailableError`
    without queuing or connecting, and the pool's own refill up to
    ``min_size`` stops too; after ``recovery_timeout`` one lease (or one
    refill) is let through as the probe, and its success closes the breaker.
    Every refill after a failed one waits 0.5 s, doubling up to 30 s
    (:class:`~resync.core.pools.kernel.pacing.ConnectBackoff`), breaker or not.
    ``close()`` refuses leases with the "is shutdown" error whatever the
    breaker's state.

    Beyond one server (:mod:`~resync.core.pools.database.topology`):
    ``pgbouncer="transaction"`` configures asyncpg for PgBouncer's transaction
    pooling; ``replica_urls`` adds read replicas for :meth:`get_read_session`
    (health-checked every ``replica_check_interval`` seconds, failing over to
    the primary); ``credentials_provider`` (sync or async, returning
    :class:`~resync.core.pools.database.credentials.DatabaseCredentials` or a
    password) logs every new connection in, so a rotation is a provider
    change and a ``drain()``. A replica's own pool (``is_replica``) does not
    treat SQLSTATE 25006 as a failover: a write sent to it is the caller's
    mistake (see :mod:`~resync.core.pools.database.replacement`).
    """

    backend = "database"
    errors = DATABASE_ERRORS

    def __init__(
        self,
        config: ConnectionPoolConfig,
        database_url: object,
        *,
        ping_idle_after: float = 1.0,
        session_options: dict[str, Any] | None = None,
        pgbouncer: str = "off",
        credentials_provider: CredentialsProvider | None = None,
        replica_urls: str | Sequence[object] | None = None,
        replica_check_interval: float | None = None,
        circuit_breaker: BreakerSpec = True,
        statement_timeout: float | None = DEFAULT_STATEMENT_TIMEOUT,
        driver_reset: DriverReset | None = None,
        check: str = "window",
        **engine_options: Any,
    ) -> None:
        super().__init__(config)
        if check not in _CHECKS:
            raise PoolConfigError(
                f"check must be one of {', '.join(_CHECKS)}, got {check!r} (pool "
                f"'{config.pool_name}'): 'window' trusts a connection used in the last "
                f"{HOT_WINDOW:g}s, 'always' checks every checkout",
                pool_name=config.pool_name,
            )
        self.circuit_breaker = build_circuit_breaker(
            config.pool_name, circuit_breaker, BACKEND_BREAKER_DEFAULTS["database"]
        )
        # A replica's breaker is its own: its server fails on its own.
        replica_breaker: BreakerSpec = (
            circuit_breaker.config
            if isinstance(circuit_breaker, CircuitBreaker)
            else circuit_breaker
        )
        self._target: DatabaseTarget | None = None
        self._url_problem = ""
        try:
            self._target = parse_database_url(database_url)
        except ValueError as exc:  # reported by initialize(), as a setup error
            self._url_problem = str(exc)
        target = self._target
        #: True for the child pool of a replica (see :mod:`~resync.core.pools.database.replicas`).
        self.is_replica = False

        def make_replica(child_config: ConnectionPoolConfig, url: object) -> DatabaseConnectionPool:
            child = type(self)(
                child_config,
                url,
                ping_idle_after=ping_idle_after,
                session_options=session_options,
                pgbouncer=pgbouncer,
                credentials_provider=credentials_provider,
                circuit_breaker=replica_breaker,
                # A read lease fails over before the caller's block runs, so a
                # replica checks every checkout (a dead one is skipped, not raised).
                check="always",
                **engine_options,
            )
            child.is_replica = True
            return child

        self._topology: Topology[DatabaseConnectionPool] = Topology(
            config,
            target,
            engine_options,
            pgbouncer=pgbouncer,
            credentials_provider=credentials_provider,
            replica_urls=replica_urls,
            replica_check_interval=replica_check_interval,
            make_replica=make_replica,
        )
        engine_options = self._topology.engine_options
        # Unique per pool, so a DBA (or a test) finds exactly this pool's
        # backends in pg_stat_activity; PostgreSQL keeps 63 bytes of it.
        self.application_name = f"resync-{config.pool_name[:48]}-{secrets.token_hex(4)}"
        self._engine_kwargs: dict[str, Any] = {}
        if target is not None:
            self._engine_kwargs = engine_arguments(
                target, config, engine_options, self.application_name, statement_timeout
            )
            server = self._engine_kwargs.get("connect_args", {}).get("server_settings", {})
            self.application_name = server.get("application_name", self.application_name)
            if target.is_memory:
                self._gate.resize(1)
        self._display = target.display if target is not None else mask_url(database_url)
        self._secret_list = (
            list(target.secrets) if target is not None else url_secrets(database_url)
        )
        self._sessionmaker: async_sessionmaker[AsyncSession] = async_sessionmaker(
            **{"expire_on_commit": False, **(session_options or {})}
        )
        self._stock = ConnectionStock(
            self.name,
            config,
            gate=self.gate,
            is_ready=self._is_ready,
            ping_after=ping_after(target, ping_idle_after, engine_options),
            scrub=self.scrub,
            backoff=ConnectBackoff(lambda: self.circuit_breaker),
            begin_timeout=lambda cause: self._timeout_error(config.connection_timeout, cause),
        )
        self._stock.bypass = self._bypass_window(check)
        self._lease_end = LeaseEnd(
            self.name,
            stock=self._stock,
            stats=self.stats,
            errors=self.errors,
            rollback_timeout=config.connection_timeout,
            scrub=self.scrub,
        )
        self._core_leases = CoreLeases(self._stock, self._lease_end, self._map_error)
        #: Sessions leased inside a test sandbox, and the sandbox's kind that ends them.
        self._sandboxed: dict[AsyncSession, SandboxSessions] = {}
        self._driver_leases = DriverLeases(
            self.name,
            stock=self._stock,
            stats=self.stats,
            errors=self.errors,
            rollback_timeout=config.connection_timeout,
            reset=driver_reset,
        )
        self._replacement = Replacement(
            self.name, stock=self._stock, is_ready=self._is_ready, scrub=self.scrub
        )

    # --- identity ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return self._display

    @property
    def engine(self) -> AsyncEngine | None:
        """The engine (``None`` unless ready); its own connections bypass the
        pool's limits, so keep it for schema work and the like."""
        return self._stock.engine

    @property
    def pgbouncer(self) -> str:
        """The PgBouncer pooling mode this pool is configured for."""
        return self._topology.pgbouncer

    @property
    def idle_count(self) -> int:
        """Connections open and idle now (no lease holds them)."""
        return len(self._stock.idle)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]} url={self._display}>"

    def _secrets(self) -> list[str]:
        return self._secret_list + self._topology.secrets()

    def _idle_connections(self) -> int:
        return self.idle_count

    def _bypass_window(self, check: str) -> float:
        # The window trusts a connection without I/O; a black-holed one is never
        # flagged by the driver, so with asyncpg the window needs a statement
        # timeout in force (it bounds the first statement instead).
        if check == "always":
            return 0.0
        target = self._target
        timed = self._engine_kwargs.get("connect_args", {}).get("command_timeout")
        if target is not None and target.driver == "asyncpg" and not timed:
            return 0.0
        return HOT_WINDOW

    def _is_ready(self) -> bool:
        return self._state is PoolState.READY

    def _admission_capacity(self, max_size: int) -> int:
        target = self._target
        return 1 if target is not None and target.is_memory else max_size  # see class docs

    async def _apply_resize(self) -> None:
        """After ``resize()``: idle connections above ``max_size`` close now (oldest
        first); leased ones above it close once idle past ``idle_timeout``; the
        pool reopens up to the new ``min_size`` when a slot is free."""
        stock = self._stock
        stock.config = self.config
        await stock.shed(self._gate.capacity)
        await stock.top_up()

    def _details(self) -> dict[str, Any]:
        target = self._target
        return {
            "target": target.display if target is not None else None,
            "driver": target.driver if target is not None else None,
            "application_name": self.application_name,
            "generation": self._stock.generation,
            "alive_bypass_window": self._stock.bypass,
            "revived_leases": self._stock.revived,
            "replacements": self.replacements,
            "read_only_errors": self.read_only_errors,
            **self._topology.details(),
        }

    @property
    def display_target(self) -> str | None:
        """The database URL, password masked."""
        return self.url

    # --- setup and close ---------------------------------------------------------------

    async def _setup_pool(self) -> None:
        target = self._target
        if target is None:
            raise ValueError(self._url_problem)
        engine = create_engine(
            target,
            self._engine_kwargs,
            name=self.name,
            stats=self.stats,
            scrub=self.scrub,
            on_driver_error=self._on_driver_error,
        )
        self._stock.engine = engine
        self._stock.watch_statements()
        self._stock.opener = self._topology.use_credentials(engine)
        count = min(max(self.config.min_size, 1), self._gate.capacity)
        await self._stock.open(count, keep_alive=target.is_memory, display=self._display)
        self._stock.start_maintenance()
        logger.info("pool '%s': %d connection(s) open to %s", self.name, count, self._display)
        await self._topology.start()

    async def _close_pool(self) -> None:
        # Background tasks first (the kernel's stop_task), then the replicas,
        # then this pool's connections: a lease still out after the drain is
        # cut off (see ConnectionStock.close_all).
        await self._stock.stop_maintenance()
        await self._replacement.stop()
        await self._topology.stop()
        await self._stock.close_all()

    # --- leasing ------------------------------------------------------------------------

    def connection(self, priority: Priority | PriorityName = DEFAULT) -> Lease[AsyncConnection]:
        """Lease SQLAlchemy Core's ``AsyncConnection``: ``async with pool.connection() as conn``.

        What ``engine.connect()`` gives, on a pooled connection, without an
        ORM session: a clean exit commits, an exception rolls back, with the
        same commit rules and errors as :meth:`get_connection` (a refused
        commit, ``DatabaseCommitUnknownError``, a lost connection) and the
        same admission, timeouts, stats, breaker and cancellation guarantees.
        ``priority`` as for :meth:`get_connection` (who is refused first under
        overload). Do not keep the connection past the block: it goes back to
        the pool.
        """
        chosen = DEFAULT if priority is DEFAULT else self.priority_of(priority)
        box = active_sandbox.get()  # a test sandbox (resync.testing): its connection
        if box is None:
            return Lease(self, self._core_leases, chosen)
        return Lease(self, box.connections(self, self._map_error), chosen)

    def driver_connection(self, priority: Priority | PriorityName = DEFAULT) -> Lease[Any]:
        """Lease the driver's own connection: ``async with pool.driver_connection() as conn``.

        An ``asyncpg.Connection`` (PostgreSQL) or ``aiosqlite.Connection``
        (SQLite), autocommit unless you open a transaction, with no round trip
        at checkout for a connection used in the last 0.5 s (see
        :mod:`~resync.core.pools.database.driver` for the rules and the
        trade-off). Same admission, ``connection_timeout``, stats, leak
        detection, breaker and cancellation guarantees as
        :meth:`get_connection`; a transaction left open is rolled back at
        release and a connection in an unknown state (cancelled or timed out
        mid-statement, broken) is discarded. After ``close()``: the "is
        shutdown" error. ``priority`` as for :meth:`get_connection`.
        """
        chosen = DEFAULT if priority is DEFAULT else self.priority_of(priority)
        box = active_sandbox.get()  # a test sandbox (resync.testing): its connection
        if box is None:
            return Lease(self, self._driver_leases, chosen)
        return Lease(self, box.drivers(self, self._driver_leases.map_error), chosen)

    async def _acquire_connection(self, timeout: float) -> AsyncSession:
        box = active_sandbox.get()  # a test sandbox (resync.testing): its connection
        if box is not None:
            kind = box.sessions(self, self._sessionmaker, self._map_error)
            session = await kind.acquire(timeout)
            self._sandboxed[session] = kind
            return session
        held = await self._stock.checkout(timeout)
        session = self._sessionmaker(bind=held.conn)
        self._stock.lend(session, held)
        return session

    async def _release_connection(self, session: AsyncSession, error: BaseException | None) -> None:
        if self._sandboxed and session in self._sandboxed:
            return await self._sandboxed.pop(session).release(session, error)
        await self._lease_end.end(session, error)

    def _bind_deadline(self, connection: Any, deadline: Deadline) -> Callable[[], object] | None:
        # Statements cannot be bounded per call through SQLAlchemy: the lease
        # cuts the connection off at the deadline (see database/deadline.py).
        if active_sandbox.get() is not None:
            return None  # a test sandbox's one shared connection is never cut
        return deadline_abort(connection)

    # --- reads on replicas, replacement ------------------------------------------------

    @property
    def replicas(self) -> list[DatabaseConnectionPool]:
        """The replicas' own pools (empty without ``replica_urls``)."""
        return self._topology.replicas

    def get_read_session(self) -> ReadLease:
        """Lease a session for reads: ``async with pool.get_read_session() as session``.

        Goes to the least busy healthy replica, else to the primary (without
        ``replica_urls``: always the primary). A replica that cannot give a
        connection is taken out and the next is tried, so a replica outage
        costs no failed read; a replica that does not answer within
        ``connection_timeout`` raises the pool's timeout error and is taken
        out. Otherwise as ``get_connection()``: commit on clean exit, roll
        back on an exception, cancellation frees the slot; after ``close()``
        the "is shutdown" error. Writes belong on ``get_connection()``: a
        replica refuses them (SQLSTATE 25006, a ``DatabaseError``). Inside a
        test sandbox, reads go to the primary's sandbox (they see its writes).
        """
        if active_sandbox.get() is not None:
            return ReadLease(self, None)
        return self._topology.read_lease(self)

    @property
    def read_only_errors(self) -> int:
        """Errors with SQLSTATE 25006 seen (each retires the connections at most once)."""
        return self._replacement.read_only_errors

    @property
    def replacements(self) -> int:
        """Times every connection was retired (``drain()`` or a read-only server)."""
        return self._replacement.replacements

    def replace_all_connections(self, reason: str) -> int:
        """Retire every connection now, so each later lease runs on a fresh one.

        For when the server behind the connections changed or went bad (a
        read-only ex-primary, a failover): no I/O and no ``await``, so it can
        be called from anywhere, a SQLAlchemy event handler included. Idle
        connections are closed in the background and reopened up to
        ``min_size``; leased ones are closed when their lease ends. Logs
        ``reason`` once; returns how many connections were retired (0 unless
        the pool is ready). ``close()`` stops the background replacement.
        """
        return self._replacement.replace_all(reason)

    async def _replace_connections(self, interval: float | None) -> int:
        # drain(): this pool's connections, then the replicas' (a rotated
        # password is usually theirs as well).
        replaced = await self._replacement.drain(interval)
        return replaced + await self._topology.drain(interval)

    def _on_driver_error(self, context: ExceptionContext) -> None:
        # A replica refusing a write (25006) is the caller's mistake, not a
        # demoted primary: the primary's handler would retire every connection.
        if not self.is_replica:
            self._replacement.on_driver_error(context)

    # --- errors and health -----------------------------------------------------------------

    def _map_error(self, error: BaseException) -> BaseException:
        # The message names the driver's error class and SQLSTATE only: the
        # driver's text may quote a bound parameter and SQLAlchemy's carries the
        # statement (logged at DEBUG by the engine's hook). Raised ``from None``.
        if not isinstance(error, SQLAlchemyError):
            return error
        what = describe_sql_error(error)
        if _carries_bad_text(error):
            mapped: ResyncError = DatabaseInvalidTextError(
                f"Database operation failed: a value is text that is not valid Unicode "
                f"(a lone surrogate?) (pool '{self.name}'); nothing was sent for it and the "
                "transaction was rolled back; reject such input before it reaches the database",
                pool_name=self.name,
            )
        elif self._is_backend_failure(error):
            mapped = DatabaseConnectionLostError(
                f"Database operation failed: the connection to the server broke ({what}) "
                f"(pool '{self.name}'); nothing was committed, retry when the server answers",
                pool_name=self.name,
            )
        else:
            mapped = self.errors.base(
                f"Database operation failed: {what} (pool '{self.name}'); the transaction "
                "was rolled back (the statement is logged at DEBUG)",
                pool_name=self.name,
            )
        mapped.hides_cause = True
        return mapped

    def _is_backend_failure(self, error: BaseException) -> bool:
        # asyncpg's "cannot switch to state N" after a killed backend, or a
        # closed connection: lost, though SQLAlchemy may not flag it.
        if client_state_broken(error):
            return True
        if isinstance(error, DBAPIError):
            return bool(error.connection_invalidated)
        return isinstance(error, OSError | TimeoutError)

    def _is_release_failure(self, error: BaseException) -> bool:
        # The lease's COMMIT or ROLLBACK found the connection broken.
        return (
            isinstance(error, DatabaseConnectionLostError | DatabaseCommitUnknownError)
            and error.pool_name == self.name
        )

    def _is_connect_failure(self, error: BaseException) -> bool:
        # At checkout every driver error is the server's: it refused the
        # login (too many clients, a password), lost the connection or never
        # answered (BEGIN past asyncpg's command_timeout included); no statement
        # of the caller's has run yet.
        if isinstance(error, DatabaseStatementTimeoutError):
            return True
        if isinstance(error, ResyncError):
            return False
        return isinstance(error, DBAPIError) or self._is_backend_failure(error)

    async def _ping(self, connection: AsyncSession) -> None:
        await connection.execute(_SELECT_ONE)


def _carries_bad_text(error: BaseException) -> bool:
    """Is a UnicodeError (a string no driver can encode) behind ``error``?"""
    return any(isinstance(link, UnicodeError) for link in error_chain(error))
