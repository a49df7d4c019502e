"""Beyond one server: PgBouncer, read replicas and rotating credentials.

A mixin of :class:`~resync.core.pools.database.pool.DatabaseConnectionPool` that
wires three constructor options into the pool (each documented in its own
module):

- ``pgbouncer="transaction"`` (``DB_POOL_PGBOUNCER``): engine options for
  PgBouncer's transaction pooling -- :mod:`~resync.core.pools.database.pgbouncer`;
- ``replica_urls`` (``DATABASE_REPLICA_URLS``): child pools for read replicas,
  :meth:`DatabaseTopology.get_read_session`, replica health --
  :mod:`~resync.core.pools.database.replicas`;
- ``credentials_provider``: a fresh login for every new connection, then
  ``drain()`` to rotate -- :mod:`~resync.core.pools.database.credentials`.

``drain()`` of a pool with replicas drains the replicas too (a rotated
password is usually theirs as well).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import ExceptionContext

from resync.core.exceptions import PoolConfigError
from resync.core.pools.database.credentials import CredentialSource, CredentialsProvider
from resync.core.pools.database.pgbouncer import pgbouncer_engine_options
from resync.core.pools.database.replacement import DatabaseReplacement
from resync.core.pools.database.replicas import ReadLease, ReplicaSet
from resync.core.pools.database.url import DatabaseTarget, parse_database_url
from resync.core.redact import mask_url

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from resync.core.pools.database.pool import DatabaseConnectionPool
    from resync.core.pools.kernel.config import ConnectionPoolConfig

__all__ = ["DatabaseTopology", "split_replica_urls"]


def split_replica_urls(urls: str | Sequence[object] | None) -> list[object]:
    """``DATABASE_REPLICA_URLS`` as a list: a comma-separated ``str`` or a sequence."""
    if urls is None:
        return []
    if isinstance(urls, str):
        return [part.strip() for part in urls.split(",") if part.strip()]
    return list(urls)


class DatabaseTopology(DatabaseReplacement):
    """PgBouncer profile, read replicas and credentials provider of the pool.

    Extends the replacement mixin: ``drain()`` also drains the replicas, and a
    replica's pool ignores SQLSTATE 25006 (see ``_on_driver_error``).
    """

    #: The PgBouncer pooling mode this pool is configured for.
    pgbouncer: str
    #: True for the child pool of a replica (see :mod:`~resync.core.pools.database.replicas`).
    is_replica: bool
    _credentials: CredentialSource | None
    _replica_set: ReplicaSet | None

    if TYPE_CHECKING:
        config: ConnectionPoolConfig

    def _init_topology(
        self,
        target: DatabaseTarget | None,
        engine_options: Mapping[str, Any],
        *,
        pgbouncer: str,
        credentials_provider: CredentialsProvider | None,
        replica_urls: str | Sequence[object] | None,
        replica_check_interval: float | None,
        child_options: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Set the three options up (no I/O); return the engine options to use.

        Raises :class:`PoolConfigError` for a bad PgBouncer mode, a replica URL
        that cannot be parsed (shown masked) or replicas of an SQLite pool.
        """
        self.pgbouncer = pgbouncer
        self.is_replica = False
        driver = target.driver if target is not None else None
        options = pgbouncer_engine_options(pgbouncer, driver, engine_options, self.name)
        self._credentials = None
        if credentials_provider is not None:
            self._credentials = CredentialSource(credentials_provider, self.name)
        self._replica_set = None
        urls = split_replica_urls(replica_urls)
        if urls:
            children = [
                self._make_replica(n, url, engine_options, credentials_provider, child_options)
                for n, url in enumerate(urls, start=1)
            ]
            interval = replica_check_interval
            if interval is None:
                interval = self.config.health_check_interval or 5.0
            self._replica_set = ReplicaSet(self._self(), children, interval)
        return options

    def _self(self) -> DatabaseConnectionPool:
        return self  # type: ignore[return-value]  # only mixed into DatabaseConnectionPool

    def _make_replica(
        self,
        number: int,
        url: object,
        engine_options: Mapping[str, Any],
        credentials_provider: CredentialsProvider | None,
        child_options: Mapping[str, Any],
    ) -> DatabaseConnectionPool:
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
        name = f"{self.name[:40]}-replica-{number}"
        child = type(self._self())(
            self.config.replace(pool_name=name),
            url,
            pgbouncer=self.pgbouncer,
            credentials_provider=credentials_provider,
            **child_options,
            **engine_options,
        )
        child.is_replica = True
        return child

    # --- reads ------------------------------------------------------------------------

    @property
    def replicas(self) -> list[DatabaseConnectionPool]:
        """The replicas' own pools (empty without ``replica_urls``)."""
        replica_set = self._replica_set
        return [] if replica_set is None else [r.pool for r in replica_set.replicas]

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
        replica refuses them (SQLSTATE 25006, a ``DatabaseError``).
        """
        return ReadLease(self._self(), self._replica_set)

    # --- hooks into the pool's lifecycle ------------------------------------------------

    def _use_credentials(self, engine: AsyncEngine) -> None:
        """Open every new connection of ``engine`` with the provider's credentials."""
        source = self._credentials
        if source is not None:
            source.install(engine)
            self._stock.opener = source.connect

    async def _start_replicas(self) -> None:
        if self._replica_set is not None:
            await self._replica_set.start()

    async def _stop_replicas(self) -> None:
        if self._replica_set is not None:
            await self._replica_set.stop()

    def _topology_secrets(self) -> list[str]:
        source = self._credentials
        return [] if source is None else sorted(source.secrets, key=len, reverse=True)

    def _topology_details(self) -> dict[str, Any]:
        details: dict[str, Any] = {"pgbouncer": self.pgbouncer}
        if self._credentials is not None:
            details["credential_fetches"] = self._credentials.calls
        if self._replica_set is not None:
            details.update(self._replica_set.details())
        return details

    async def _replace_connections(self, interval: float | None) -> int:
        replaced = await super()._replace_connections(interval)
        if self._replica_set is not None:
            replaced += await self._replica_set.drain(interval)
        return replaced

    def _on_driver_error(self, context: ExceptionContext) -> None:
        # A replica refusing a write (25006) is the caller's mistake, not a
        # demoted primary: the primary's handler would retire every connection.
        if not self.is_replica:
            super()._on_driver_error(context)
