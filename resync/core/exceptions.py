"""One error hierarchy for the whole connection layer.

Every error resync raises on purpose is a :class:`ResyncError`. Errors that come
from a pool carry the pool's name (``exc.pool_name``) and say in their message
what to change. Backend (driver) errors are translated at the boundary of each
pool and chained with ``raise ... from exc``, so the original is never lost.

The tree::

    ResyncError
    ├── ConfigurationError (ValueError)        bad settings or pool config
    │   ├── SettingsError                        an environment variable broke a rule
    │   └── PoolConfigError                      a ConnectionPoolConfig field broke a rule
    ├── InvalidPriorityError (ValueError)       a lease priority not critical/default/sheddable
    ├── PoolError                                anything a pool refuses; has .pool_name
    │   ├── PoolTimeoutError (TimeoutError)      no connection within connection_timeout
    │   ├── DeadlineExceededError (TimeoutError) the caller's resync.deadline() ran out
    │   ├── PoolClosedError                      lease after close(): "... is shutdown"
    │   ├── PoolNotInitializedError              lease before initialize()
    │   ├── PoolOverloadedError                  max_waiting reached: shed at once
    │   ├── BackendUnavailableError              circuit breaker open: fail fast
    │   ├── PoolSetupError                       initialize() could not reach the backend
    │   └── ManagerError                         pool manager misuse
    │       ├── PoolNotFoundError (KeyError)     no pool registered under that name
    │       └── ManagerStartError (+ TWSConnectionError, as the seed raised)
    │                                            a pool failed to open; the others were closed
    ├── ResourceBroken                           a pooled resource is unusable: the pool closes it
    ├── DatabaseError                            seed family: SQL databases and Redis
    │   ├── DatabasePoolTimeoutError   (+ PoolTimeoutError)
    │   ├── DatabaseDeadlineExceededError (+ DeadlineExceededError)
    │   ├── DatabasePoolClosedError    (+ PoolClosedError)
    │   ├── DatabasePoolNotInitializedError (+ PoolNotInitializedError)
    │   ├── DatabasePoolOverloadedError (+ PoolOverloadedError)
    │   ├── DatabaseUnavailableError   (+ BackendUnavailableError)
    │   ├── DatabaseSetupError         (+ PoolSetupError)
    │   ├── DatabaseStatementTimeoutError (TimeoutError)  no answer in the command timeout
    │   ├── DatabaseConnectionLostError (ConnectionError) the connection broke during a lease
    │   ├── DatabaseInvalidTextError (UnicodeError) a value no driver can encode (lone surrogate)
    │   ├── DatabaseCommitUnknownError           connection lost during COMMIT: outcome unknown
    │   ├── DatabaseSandboxError (+ PoolError)   a test sandbox cannot run this lease or statement
    │   └── RedisPoolError                       the Redis family (a DatabaseError, as in the seed)
    │       ├── RedisPoolTimeoutError  (+ PoolTimeoutError)
    │       ├── RedisDeadlineExceededError (+ DeadlineExceededError)
    │       ├── RedisPoolClosedError   (+ PoolClosedError)
    │       ├── RedisPoolNotInitializedError (+ PoolNotInitializedError)
    │       ├── RedisPoolOverloadedError (+ PoolOverloadedError)
    │       ├── RedisUnavailableError  (+ BackendUnavailableError)
    │       └── RedisSetupError        (+ PoolSetupError)
    └── TWSConnectionError                       seed family: upstream HTTP APIs
        ├── HTTPPoolTimeoutError       (+ PoolTimeoutError)
        ├── HTTPDeadlineExceededError  (+ DeadlineExceededError)
        ├── HTTPPoolClosedError        (+ PoolClosedError)
        ├── HTTPPoolNotInitializedError (+ PoolNotInitializedError)
        ├── HTTPPoolOverloadedError    (+ PoolOverloadedError)
        ├── HTTPUnavailableError       (+ BackendUnavailableError)
        ├── HTTPSetupError             (+ PoolSetupError)
        ├── HTTPConnectError                     could not connect to the upstream
        ├── HTTPTimeoutError (TimeoutError)      the upstream did not answer in time
        ├── HTTPProtocolError                    the upstream broke the protocol
        └── HTTPStatusError                      status >= 500 when asked to raise

So a database pool's "not initialized" is caught by ``except DatabaseError``,
by ``except PoolNotInitializedError`` and by ``except PoolError`` alike; a
timeout of any pool is also a builtin :class:`TimeoutError`.

Each backend declares its family once as an :class:`ErrorFamily`; the shared
lease path in :mod:`resync.core.pools.base_pool` raises from that family, so no
backend re-implements admission errors.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DATABASE_ERRORS",
    "GENERIC_ERRORS",
    "HTTP_ERRORS",
    "REDIS_ERRORS",
    "BackendUnavailableError",
    "ConfigurationError",
    "DatabaseCommitUnknownError",
    "DatabaseDeadlineExceededError",
    "DatabaseError",
    "DatabaseInvalidTextError",
    "DatabasePoolClosedError",
    "DatabasePoolNotInitializedError",
    "DatabasePoolOverloadedError",
    "DatabasePoolTimeoutError",
    "DatabaseSandboxError",
    "DatabaseSetupError",
    "DatabaseStatementTimeoutError",
    "DatabaseUnavailableError",
    "DeadlineExceededError",
    "ErrorFamily",
    "HTTPConnectError",
    "HTTPDeadlineExceededError",
    "HTTPPoolClosedError",
    "HTTPPoolNotInitializedError",
    "HTTPPoolOverloadedError",
    "HTTPPoolTimeoutError",
    "HTTPProtocolError",
    "HTTPSetupError",
    "HTTPStatusError",
    "HTTPTimeoutError",
    "HTTPUnavailableError",
    "InvalidPriorityError",
    "ManagerError",
    "ManagerStartError",
    "PoolClosedError",
    "PoolConfigError",
    "PoolError",
    "PoolNotFoundError",
    "PoolNotInitializedError",
    "PoolOverloadedError",
    "PoolSetupError",
    "PoolTimeoutError",
    "RedisDeadlineExceededError",
    "RedisPoolClosedError",
    "RedisPoolError",
    "RedisPoolNotInitializedError",
    "RedisPoolOverloadedError",
    "RedisPoolTimeoutError",
    "RedisSetupError",
    "RedisUnavailableError",
    "ResourceBroken",
    "ResyncError",
    "SettingsError",
    "TWSConnectionError",
]


class ResyncError(Exception):
    """Root of every error resync raises on purpose.

    ``pool_name`` names the pool the error is about, or is ``None`` when the
    error is not about one pool (settings, for example).
    """

    #: True when the driver error behind this one may quote secrets (a bound
    #: parameter, SQL text): the pool then raises it ``from None``, so no
    #: traceback or log line prints the driver's error.
    hides_cause: bool = False

    def __init__(self, message: str = "", *, pool_name: str | None = None) -> None:
        super().__init__(message)
        self.pool_name = pool_name


# --- configuration -----------------------------------------------------------


class ConfigurationError(ResyncError, ValueError):
    """A setting or a pool option has a value that cannot work."""


class SettingsError(ConfigurationError):
    """One or more environment variables (or ``.env`` entries) are invalid.

    ``errors`` lists ``(variable, rule)`` pairs, one per broken rule.
    """

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = list(errors or [])


class PoolConfigError(ConfigurationError):
    """A :class:`~resync.core.pools.base_pool.ConnectionPoolConfig` field is invalid."""


# --- generic pool errors -----------------------------------------------------


class InvalidPriorityError(ResyncError, ValueError):
    """A lease asked for a priority that is not ``critical``, ``default`` or ``sheddable``."""


class PoolError(ResyncError):
    """A pool refused or could not complete a lease, a setup or a close."""


class PoolTimeoutError(PoolError, TimeoutError):
    """No connection became free within ``connection_timeout``.

    Also a builtin :class:`TimeoutError` (and so an ``asyncio.TimeoutError``).
    """


class DeadlineExceededError(PoolError, TimeoutError):
    """The caller's deadline (``resync.deadline()``, a request's
    ``X-Request-Timeout``) ran out before or during a lease -- not the pool.

    Raised at once for a lease attempted after the deadline passed, when the
    wait or connect it capped ran out, and for a call on a leased connection
    cut off at the deadline (that connection is discarded, never reused; a
    database lease cut off so commits nothing). Not a
    :class:`PoolTimeoutError`: the pool was not too small, the caller was out
    of time. Also a builtin :class:`TimeoutError`; the service answers 504
    ``deadline_exceeded``.
    """


class PoolClosedError(PoolError):
    """The pool is shut down (or shutting down) and takes no new leases."""


class PoolNotInitializedError(PoolError):
    """The pool was used before ``await pool.initialize()``."""


class PoolOverloadedError(PoolError):
    """``max_waiting`` callers are already queued; the lease is refused at once."""


class BackendUnavailableError(PoolError):
    """The pool's circuit breaker is open: the backend is failing, so fail fast."""


class PoolSetupError(PoolError):
    """``initialize()`` could not set up the driver or reach the backend."""


class ManagerError(PoolError):
    """The pool manager was misused (wrong loop, duplicate name, after shutdown)."""


class PoolNotFoundError(ManagerError, KeyError):
    """No pool is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ResourceBroken(ResyncError):
    """The resource a lease holds is unusable (a worker died, a socket broke).

    Raise it (or a subclass) inside ``async with pool.get_connection()`` of a
    :class:`~resync.core.pools.resource.pool.ResourcePool`: the pool closes that
    resource instead of returning it, and never hands it out again.
    """


# --- database family (seed: DatabaseError) -------------------------------------


class DatabaseError(ResyncError):
    """Seed family for SQL database and Redis errors.

    SQLAlchemy errors raised inside a lease come out as
    ``DatabaseError("Database operation failed: ...")``.
    """


class DatabasePoolTimeoutError(DatabaseError, PoolTimeoutError):
    """A database pool had no free connection within ``connection_timeout``."""


class DatabaseDeadlineExceededError(DatabaseError, DeadlineExceededError):
    """A database lease or statement ran out of the caller's deadline."""


class DatabasePoolClosedError(DatabaseError, PoolClosedError):
    """A database pool is shut down."""


class DatabasePoolNotInitializedError(DatabaseError, PoolNotInitializedError):
    """A database pool was used before ``initialize()``."""


class DatabasePoolOverloadedError(DatabaseError, PoolOverloadedError):
    """A database pool's wait queue is full."""


class DatabaseUnavailableError(DatabaseError, BackendUnavailableError):
    """A database pool's circuit breaker is open."""


class DatabaseSetupError(DatabaseError, PoolSetupError):
    """A database pool could not be set up ("Failed to setup ...")."""


class DatabaseStatementTimeoutError(DatabaseError, TimeoutError):
    """The server did not answer a statement within the driver's command timeout.

    (asyncpg's ``command_timeout``.) The connection is discarded when the
    lease ends. Also a builtin :class:`TimeoutError`, as the driver's was.
    """


class DatabaseConnectionLostError(DatabaseError, ConnectionError):
    """The connection to the database server broke (or was refused) during a lease.

    Nothing was committed (a broken ``COMMIT`` is
    :class:`DatabaseCommitUnknownError`); the connection is discarded. Also a
    builtin :class:`ConnectionError`. Retry once the server answers again.
    """


class DatabaseInvalidTextError(DatabaseError, UnicodeError):
    """A value could not be sent: text that is not valid Unicode (a lone surrogate).

    Such a string is valid JSON (``"\\ud800"``) and a valid Python ``str``,
    but no driver can encode it. Nothing was sent for it; the transaction was
    rolled back. Also a builtin :class:`UnicodeError` (a ``ValueError``): the
    service answers 422. The value itself is never in the message.
    """


class DatabaseCommitUnknownError(DatabaseError):
    """The connection was lost while ``COMMIT`` was in flight: the outcome is unknown.

    The server may have committed the transaction before the connection
    broke, or never received the ``COMMIT``. Only this error leaves that open:
    any other error from a lease means nothing was committed. Check for the
    transaction's effect (a unique id written by it, say) before retrying it.
    """


class DatabaseSandboxError(DatabaseError, PoolError):
    """A test sandbox (``resync.testing``) cannot run this lease or statement.

    Raised for a driver the sandbox does not support, a pool in AUTOCOMMIT
    mode, a statement that cannot run inside a transaction block (``CREATE
    INDEX CONCURRENTLY``, ``VACUUM``, ``CREATE DATABASE``), a commit of the
    sandbox's own outer transaction, a sandbox whose connection broke, and a
    lease after the sandbox's test ended. The message names the pool and the
    way out (usually ``resync.testing.outside_sandbox()``).
    """


# --- Redis family (a DatabaseError, as in the seed) ----------------------------


class RedisPoolError(DatabaseError):
    """Root of the Redis family: Redis errors raised inside a lease come out here."""


class RedisPoolTimeoutError(RedisPoolError, PoolTimeoutError):
    """A Redis pool had no free connection within ``connection_timeout``."""


class RedisDeadlineExceededError(RedisPoolError, DeadlineExceededError):
    """A Redis lease or command ran out of the caller's deadline."""


class RedisPoolClosedError(RedisPoolError, PoolClosedError):
    """A Redis pool is shut down."""


class RedisPoolNotInitializedError(RedisPoolError, PoolNotInitializedError):
    """A Redis pool was used before ``initialize()``."""


class RedisPoolOverloadedError(RedisPoolError, PoolOverloadedError):
    """A Redis pool's wait queue is full."""


class RedisUnavailableError(RedisPoolError, BackendUnavailableError):
    """A Redis pool's circuit breaker is open."""


class RedisSetupError(RedisPoolError, PoolSetupError):
    """A Redis pool could not be set up or could not PING the server."""


# --- HTTP family (seed: TWSConnectionError) ------------------------------------


class TWSConnectionError(ResyncError):
    """Seed family for upstream HTTP API errors (httpx errors are mapped here).

    "TWS" is the seed's name for the upstream HTTP API (``TWS_BASE_URL``, pool
    ``tws_http``); the name is kept so the seed's code keeps working.
    """


class ManagerStartError(ManagerError, TWSConnectionError):
    """A pool failed to open; every pool already opened was closed again.

    Also a :class:`TWSConnectionError`, the seed's error for a failed start.
    ``failures`` maps each failing pool's name to its (scrubbed) cause.
    """

    def __init__(self, message: str, failures: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.failures = dict(failures or {})


class HTTPPoolTimeoutError(TWSConnectionError, PoolTimeoutError):
    """An HTTP pool had no free lease within ``connection_timeout``."""


class HTTPDeadlineExceededError(TWSConnectionError, DeadlineExceededError):
    """An HTTP lease or upstream request ran out of the caller's deadline."""


class HTTPPoolClosedError(TWSConnectionError, PoolClosedError):
    """An HTTP pool is shut down."""


class HTTPPoolNotInitializedError(TWSConnectionError, PoolNotInitializedError):
    """An HTTP pool was used before ``initialize()``."""


class HTTPPoolOverloadedError(TWSConnectionError, PoolOverloadedError):
    """An HTTP pool's wait queue is full."""


class HTTPUnavailableError(TWSConnectionError, BackendUnavailableError):
    """An HTTP pool's circuit breaker is open: the upstream is failing."""


class HTTPSetupError(TWSConnectionError, PoolSetupError):
    """An HTTP pool could not be set up."""


class HTTPConnectError(TWSConnectionError):
    """A connection to the upstream could not be established."""


class HTTPTimeoutError(TWSConnectionError, TimeoutError):
    """The upstream did not connect, accept or answer within the timeout."""


class HTTPProtocolError(TWSConnectionError):
    """The upstream closed the connection or broke the HTTP protocol."""


class HTTPStatusError(TWSConnectionError):
    """The upstream answered with a server error (status >= 500)."""


# --- families -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorFamily:
    """The exception classes one backend raises for the shared lease path.

    The base pool raises ``family.timeout`` on an acquire timeout, and so on,
    so each backend's errors stay catchable both by family and by kind.
    ``deadline`` is raised when the caller's ``resync.deadline()`` ran out.
    """

    base: type[ResyncError]
    timeout: type[PoolTimeoutError]
    closed: type[PoolClosedError]
    not_initialized: type[PoolNotInitializedError]
    overloaded: type[PoolOverloadedError]
    unavailable: type[BackendUnavailableError]
    setup: type[PoolSetupError]
    deadline: type[DeadlineExceededError] = DeadlineExceededError


GENERIC_ERRORS = ErrorFamily(
    base=PoolError,
    timeout=PoolTimeoutError,
    closed=PoolClosedError,
    not_initialized=PoolNotInitializedError,
    overloaded=PoolOverloadedError,
    unavailable=BackendUnavailableError,
    setup=PoolSetupError,
)

DATABASE_ERRORS = ErrorFamily(
    base=DatabaseError,
    timeout=DatabasePoolTimeoutError,
    closed=DatabasePoolClosedError,
    not_initialized=DatabasePoolNotInitializedError,
    overloaded=DatabasePoolOverloadedError,
    unavailable=DatabaseUnavailableError,
    setup=DatabaseSetupError,
    deadline=DatabaseDeadlineExceededError,
)

REDIS_ERRORS = ErrorFamily(
    base=RedisPoolError,
    timeout=RedisPoolTimeoutError,
    closed=RedisPoolClosedError,
    not_initialized=RedisPoolNotInitializedError,
    overloaded=RedisPoolOverloadedError,
    unavailable=RedisUnavailableError,
    setup=RedisSetupError,
    deadline=RedisDeadlineExceededError,
)

HTTP_ERRORS = ErrorFamily(
    base=TWSConnectionError,
    timeout=HTTPPoolTimeoutError,
    closed=HTTPPoolClosedError,
    not_initialized=HTTPPoolNotInitializedError,
    overloaded=HTTPPoolOverloadedError,
    unavailable=HTTPUnavailableError,
    setup=HTTPSetupError,
    deadline=HTTPDeadlineExceededError,
)
