"""Fresh credentials for every new database connection: ``credentials_provider``.

Short-lived credentials cannot sit in ``DATABASE_URL``: an AWS RDS IAM token
lives 15 minutes, Vault's database engine leases a user and a password, a
secret manager rotates a password on a schedule. A
:class:`~resync.core.pools.database.pool.DatabaseConnectionPool` built with
``credentials_provider=`` calls it for every *new* connection -- warm-up,
growth under load, the replacements ``drain()`` opens, lifetime expiry, a
reconnect after a server restart -- and logs in with what it returns instead
of the URL's user and password. Open connections keep the login they made
(PostgreSQL checks a password only when a session starts), so a rotation is:

1. make the new credentials valid on the server (``ALTER ROLE ... PASSWORD``;
   a new IAM token is valid at once);
2. have the provider return them;
3. ``await pool.drain(interval)``: every connection is replaced, spread over
   ``interval`` seconds, and no lease is refused or fails.

The provider takes no arguments and returns a :class:`DatabaseCredentials`
or a ``str`` (a password or token; the URL's user is kept); it may be a plain
function or a coroutine function. It is called inside the connect, so the
pool's ``connection_timeout`` bounds both together, and cancelling the lease
cancels the call. If it raises, that connect fails with a ``ConnectionError``
naming the provider (a lease gets the pool's ``DatabaseError``; ``initialize()``
its setup error). It runs once per new connection: cache tokens inside it
(an IAM token may be reused until shortly before it expires). Every password
it returned is scrubbed from the pool's errors and logs.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["CredentialSource", "CredentialsProvider", "DatabaseCredentials"]

#: How many of the provider's passwords are remembered for scrubbing.
REMEMBERED_SECRETS = 16


@dataclass(frozen=True, slots=True)
class DatabaseCredentials:
    """A login for new connections: ``password`` and optionally ``user``.

    ``user`` None keeps the user of the URL. The password is left out of the
    ``repr``.
    """

    password: str = field(repr=False)
    user: str | None = None


CredentialsProvider: TypeAlias = Callable[
    [], "DatabaseCredentials | str | Awaitable[DatabaseCredentials | str]"
]

# The credentials of the connect running in this task. The connect runs in a
# task of its own (ConnectionStock.connect), and SQLAlchemy's greenlet keeps
# the task's context, so concurrent connects never see each other's login.
_pending: ContextVar[DatabaseCredentials | None] = ContextVar(
    "resync_pending_credentials", default=None
)


def _use_pending(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
    """SQLAlchemy ``do_connect`` hook: log in with this connect's credentials."""
    credentials = _pending.get()
    if credentials is not None:
        cparams["password"] = credentials.password
        if credentials.user:
            cparams["user"] = credentials.user


class CredentialSource:
    """Calls one provider for each new connection and remembers its secrets."""

    def __init__(self, provider: CredentialsProvider, pool_name: str) -> None:
        if not callable(provider):
            raise TypeError(
                f"credentials_provider of pool '{pool_name}' must be callable, "
                f"got {type(provider).__name__}"
            )
        self._provider = provider
        self._pool_name = pool_name
        #: Times the provider was called (one per connection opened).
        self.calls = 0
        self.secrets: deque[str] = deque(maxlen=REMEMBERED_SECRETS)

    def install(self, engine: AsyncEngine) -> None:
        """Make ``engine`` log in with the credentials of the connect in progress."""
        event.listen(engine.sync_engine, "do_connect", _use_pending)

    async def fetch(self) -> DatabaseCredentials:
        """Call the provider once; raise ``ConnectionError`` if it fails."""
        self.calls += 1
        try:
            value: Any = self._provider()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            raise ConnectionError(
                f"the credentials_provider of pool '{self._pool_name}' failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if hasattr(value, "get_secret_value"):  # a pydantic SecretStr
            value = value.get_secret_value()
        if isinstance(value, str):
            value = DatabaseCredentials(value)
        if not isinstance(value, DatabaseCredentials) or not isinstance(value.password, str):
            raise ConnectionError(
                f"the credentials_provider of pool '{self._pool_name}' must return "
                f"DatabaseCredentials or a str, got {type(value).__name__}"
            )
        if value.password and value.password not in self.secrets:
            self.secrets.append(value.password)
        return value

    async def connect(self, engine: AsyncEngine) -> AsyncConnection:
        """Fetch fresh credentials, then open one connection of ``engine`` with them."""
        token = _pending.set(await self.fetch())
        try:
            return await engine.connect()
        finally:
            _pending.reset(token)
