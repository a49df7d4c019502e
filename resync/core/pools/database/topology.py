"""Beyond one server: PgBouncer, read replicas and rotating credentials.

:class:`Topology`, owned by
:class:`~resync.core.pools.database.pool.DatabaseConnectionPool`, holds what
three constructor options add to the pool (each documented in its own
module):

- ``pgbouncer="transaction"`` (``DB_POOL_PGBOUNCER``): engine options for
  PgBouncer's transaction pooling -- :mod:`~resync.core.pools.database.pgbouncer`;
- ``replica_urls`` (``DATABASE_REPLICA_URLS``): child pools for read replicas,
  :meth:`Topology.read_lease` (the pool's ``get_read_session``), replica health --
  :mod:`~resync.core.pools.database.replicas`;
- ``credentials_provider``: a fresh login for every new connection, then
  ``drain()`` to rotate -- :mod:`~resync.core.pools.database.credentials`.

``drain()`` of a pool with replicas drains the replicas too (a rotated
password is usually theirs as well).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from resync.core.exceptions import PoolConfigError
from resync.core.pools.database.credentials import CredentialSource, CredentialsProvider
from resync.core.pools.database.pgbouncer import pgbouncer_engine_options
from resync.core.pools.database.replicas import P, PrimaryPool, ReadLease, ReplicaSet
from resync.core.pools.database.url import DatabaseTarget, parse_database_url
from resync.core.pools.kernel.config import ConnectionPoolConfig
from resync.core.redact import mask_url

__all__ = ["Topology", "split_replica_urls"]


def split_replica_urls(urls: str | Sequence[object] | None) -> list[object]:
    """``DATABASE_REPLICA_URLS`` as a list: a comma-separated ``str`` or a sequence."""
    if urls is None:
        return []
    if isinstance(urls, str):
        return [part.strip() for part in urls.split(",") if part.strip()]
    return list(urls)


class Topology(Generic[P]):
    """PgBouncer profile, read replicas and credentials provider of one pool.

    Built with no I/O. ``make_replica(config, url)`` builds the pool of one
    replica (the primary's class, options and credentials); replicas are
    named ``<pool>-replica-<n>`` and opened by :meth:`start`.

    Raises :class:`PoolConfigError` for a bad PgBouncer mode, a replica URL
    that cannot be parsed (shown masked) or replicas of an SQLite pool, and
    ``TypeError`` for a ``credentials_provider`` that is not callable.
    """

    def __init__(
        self,
        config: ConnectionPoolConfig,
        target: DatabaseTarget | None,
        engine_options: Mapping[str, Any],
        *,
        pgbouncer: str,
        credentials_provider: CredentialsProvider | None,
        replica_urls: str | Sequence[object] | None,
        replica_check_interval: float | None,
        make_replica: Callable[[ConnectionPoolConfig, object], P],
    ) -> None:
        self.name = name = config.pool_name
        #: The PgBouncer pooling mode this pool is configured for.
        self.pgbouncer = pgbouncer
        driver = target.driver if target is not None else None
        #: The engine options to use: the caller's, adjusted for PgBouncer.
        self.engine_options = pgbouncer_engine_options(pgbouncer, driver, engine_options, name)
        #: The credentials provider's source, or ``None`` (the URL's login).
        self.credentials: CredentialSource | None = None
        if credentials_provider is not None:
            self.credentials = CredentialSource(credentials_provider, name)
        self._replica_set: ReplicaSet[P] | None = None
        urls = split_replica_urls(replica_urls)
        if urls:
            children = [
                make_replica(self._replica_config(config, n, url), url)
                for n, url in enumerate(urls, start=1)
            ]
            interval = replica_check_interval
            if interval is None:
                interval = config.health_check_interval or 5.0
            self._replica_set = ReplicaSet(name, children, interval)

    def _replica_config(
        self, config: ConnectionPoolConfig, number: int, url: object
    ) -> ConnectionPoolConfig:
        try:
            target = parse_database_url(url)
        except ValueError as exc:
            raise PoolConfigError(
                f"replica URL #{number} of pool '{self.name}' is invalid: {exc}",
                pool_name=self.name,
            ) from None
        if target.backend == "sqlite":
            raise PoolConfigError(
                f"replica URL #{number} of pool '{self.name}' is SQLite "
                f"({mask_url(target.display)}); read replicas need a server database",
                pool_name=self.name,
            )
        return config.replace(pool_name=f"{self.name[:40]}-replica-{number}")

    # --- reads ------------------------------------------------------------------------

    @property
    def replicas(self) -> list[P]:
        """The replicas' own pools (empty without ``replica_urls``)."""
        replica_set = self._replica_set
        return [] if replica_set is None else [r.pool for r in replica_set.replicas]

    def read_lease(self, primary: PrimaryPool) -> ReadLease:
        """A read lease on a replica, falling back to ``primary`` (see :class:`ReadLease`)."""
        return ReadLease(primary, self._replica_set)

    # --- the pool's lifecycle -------------------------------------------------------------

    def use_credentials(
        self, engine: AsyncEngine
    ) -> Callable[[AsyncEngine], Awaitable[AsyncConnection]] | None:
        """Open every new connection of ``engine`` with the provider's credentials;
        return the opener the stock must use (``None``: the engine's own connect)."""
        source = self.credentials
        if source is None:
            return None
        source.install(engine)
        return source.connect

    async def start(self) -> None:
        """Open the replicas and start their health task (see ``ReplicaSet.start``)."""
        if self._replica_set is not None:
            await self._replica_set.start()

    async def stop(self) -> None:
        """Stop the health task and close the replicas (see ``ReplicaSet.stop``)."""
        if self._replica_set is not None:
            await self._replica_set.stop()

    async def drain(self, interval: float | None) -> int:
        """``drain()`` the open replicas; how many of their connections were marked."""
        if self._replica_set is None:
            return 0
        return await self._replica_set.drain(interval)

    def secrets(self) -> list[str]:
        """Passwords the provider returned, longest first, for the pool's scrubber."""
        source = self.credentials
        return [] if source is None else sorted(source.secrets, key=len, reverse=True)

    def details(self) -> dict[str, Any]:
        """The ``details`` entries of the pool's stats: PgBouncer mode, credential
        fetches and the replicas' states."""
        details: dict[str, Any] = {"pgbouncer": self.pgbouncer}
        if self.credentials is not None:
            details["credential_fetches"] = self.credentials.calls
        if self._replica_set is not None:
            details.update(self._replica_set.details())
        return details
