"""The PgBouncer profile of the database pool (``DB_POOL_PGBOUNCER``).

PgBouncer in ``transaction`` pooling mode gives each *transaction* whichever
server connection is free, so nothing that lives in a server session survives
from one transaction to the next -- named prepared statements above all.
asyncpg prepares every statement that has parameters, and by default names
and caches it per connection (``__asyncpg_stmt_1__``); SQLAlchemy's asyncpg
adapter keeps its own cache of those statements on top. The next transaction
then binds the cached name on a server connection that never saw it:
``prepared statement "__asyncpg_stmt_1__" does not exist`` (or "already
exists" when two clients' names meet on one server connection).

The profile ``transaction`` sets asyncpg's ``statement_cache_size=0``: asyncpg
then prepares every statement *unnamed* and, since asyncpg 0.29 (the version
resync requires), sends the statement's ``Parse`` again with every execution,
so each execution is self-contained on whichever server connection PgBouncer
picks -- asyncpg's own answer to PgBouncer (MagicStack/asyncpg#1065, and the
asyncpg FAQ). SQLAlchemy's adapter may keep its cache of statement objects
(``prepared_statement_cache_size``): an unnamed statement object holds no
server state, only the column and parameter types, and reusing it saves the
describe: one round trip per execution instead of two with both caches off.
The other known workaround, unique statement names
(``prepared_statement_name_func``), is refused: named statements pile up on
PgBouncer's server connections, and asyncpg closes them later from whichever
server connection it then holds (MagicStack/asyncpg#1058).

What still needs the application's care in transaction mode (PgBouncer's own
rules, not resync's): session state -- ``SET`` without ``LOCAL``, advisory
locks held across transactions, ``LISTEN``, temporary tables kept after
``COMMIT`` -- does not survive a transaction. Every lease is one transaction
(the pool sends its ``BEGIN`` at checkout), so one lease always talks to one
server connection.

``session`` (PgBouncer's session mode) and ``off`` change nothing: a server
connection then stays with its client for the client's whole session.
PgBouncer 1.21+ with ``max_prepared_statements`` set also copes with named
statements; the profile is still correct there, at the price of parsing each
statement on every execution.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resync.core.exceptions import PoolConfigError

__all__ = ["PGBOUNCER_MODES", "pgbouncer_engine_options"]

#: Accepted values of ``DB_POOL_PGBOUNCER`` / ``pgbouncer=``.
PGBOUNCER_MODES = ("off", "session", "transaction")


def pgbouncer_engine_options(
    mode: str, driver: str | None, engine_options: Mapping[str, Any], pool_name: str
) -> dict[str, Any]:
    """``engine_options`` adjusted for PgBouncer pooling ``mode``.

    ``transaction`` sets asyncpg's ``statement_cache_size`` to 0 in
    ``connect_args``. It raises :class:`PoolConfigError` when the options ask
    for the opposite (a non-zero ``statement_cache_size``, unique statement
    names) or the driver is not asyncpg (``driver`` None: the URL is invalid
    and the pool reports that itself).
    """
    if mode not in PGBOUNCER_MODES:
        raise PoolConfigError(
            f"pgbouncer must be one of {', '.join(PGBOUNCER_MODES)}, got {mode!r} "
            f"(pool '{pool_name}')",
            pool_name=pool_name,
        )
    options = dict(engine_options)
    if mode != "transaction" or driver is None:
        return options
    if driver != "asyncpg":
        raise PoolConfigError(
            f"pgbouncer='transaction' needs a postgresql+asyncpg URL, not driver {driver!r} "
            f"(pool '{pool_name}')",
            pool_name=pool_name,
        )
    connect_args = dict(options.get("connect_args") or {})
    if connect_args.get("statement_cache_size", 0):
        raise PoolConfigError(
            f"connect_args statement_cache_size={connect_args['statement_cache_size']!r} "
            "contradicts pgbouncer='transaction': PgBouncer's transaction mode loses named "
            f"prepared statements; leave it unset (pool '{pool_name}')",
            pool_name=pool_name,
        )
    connect_args["statement_cache_size"] = 0
    if connect_args.get("prepared_statement_name_func") is not None:
        raise PoolConfigError(
            "connect_args prepared_statement_name_func names every statement, which "
            "pgbouncer='transaction' avoids (unused statements pile up on the server "
            f"connections); leave it unset (pool '{pool_name}')",
            pool_name=pool_name,
        )
    options["connect_args"] = connect_args
    return options
