"""The two private members of SQLAlchemy resync relies on, in one place.

resync keeps its own connections under SQLAlchemy (``NullPool``), so a few
things SQLAlchemy does only inside its own pool, or not at all, are done here:

- :func:`begin_hook`: the asyncpg adapter's ``_start_transaction``, which
  sends the transaction's ``BEGIN`` now instead of with the first statement
  -- the checkout's free liveness check (the round trip the lease makes
  anyway);
- :func:`undo_callbacks`: the ``finalize_callback`` list of a connection's
  ``_ConnectionRecord``, where SQLAlchemy queues the undo of connection
  characteristics (isolation level ...) for its pool's check-in, which a
  connection resync holds never reaches;
- :func:`swap_driver_connections`: the asyncpg adapter's ``_connection``,
  ``_prepared_statement_cache`` and ``_invalidate_schema_cache_asof`` (and a
  cursor's ``_connection``), exchanged between two adapters so a hot
  connection whose lazy ``BEGIN`` found it dead continues, transparently, on
  a fresh one (see :meth:`~.stock.ConnectionStock.lazy_begin`);
- :data:`await_`: SQLAlchemy's bridge from its greenlet back to the loop
  (``sqlalchemy.util.await_``, ``await_only`` before 2.1).

Each is read with ``getattr`` and a fallback (no BEGIN at checkout: ping
instead; no undo list: discard the connection; no swap: the ``BEGIN`` is sent
at checkout, as without the window), so a SQLAlchemy release that renames
them costs speed, never correctness. ``tests/unit/test_sqla_internals.py``
fails loudly when the installed SQLAlchemy no longer has them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import util as _sa_util

__all__ = ["await_", "begin_hook", "can_swap", "swap_driver_connections", "undo_callbacks"]

#: ``await_(coroutine)`` from sync code inside SQLAlchemy's greenlet; None if unknown.
await_: Callable[[Awaitable[Any]], Any] | None = getattr(
    _sa_util, "await_", getattr(_sa_util, "await_only", None)
)

#: What an asyncpg adapter keeps of its driver connection (see swap_driver_connections).
_ADAPTER_STATE = ("_connection", "_prepared_statement_cache", "_invalidate_schema_cache_asof")


def begin_hook(dbapi_connection: Any) -> Callable[[], Awaitable[None]] | None:
    """The adapter's "send BEGIN now" coroutine function, or None (no such hook)."""
    hook = getattr(dbapi_connection, "_start_transaction", None)
    return hook if callable(hook) else None


def undo_callbacks(pool_connection: Any) -> deque[Callable[[Any], None]] | None:
    """The queued undo callbacks of a connection's pool record (a deque SQLAlchemy
    pops from the right), or None if unknown."""
    record = getattr(pool_connection, "_connection_record", None)
    undo = getattr(record, "finalize_callback", None)
    return undo if isinstance(undo, deque) else None


def can_swap(dbapi_connection: Any) -> bool:
    """Can :func:`swap_driver_connections` work on this adapter (and is there an ``await_``)?"""
    return await_ is not None and all(hasattr(dbapi_connection, a) for a in _ADAPTER_STATE)


def swap_driver_connections(target: Any, donor: Any, cursor: Any = None) -> None:
    """Exchange the driver connections (and what is bound to them) of two adapters.

    ``target`` gets ``donor``'s asyncpg connection, its prepared-statement
    cache and schema-cache stamp; ``donor`` gets ``target``'s (to be closed).
    ``cursor``, a cursor of ``target`` created before the swap, is pointed at
    the new connection too. Codecs and server settings are set per asyncpg
    connection when it is opened, so both adapters stay consistent. Neither
    adapter may be inside a transaction.
    """
    for name in _ADAPTER_STATE:
        mine, theirs = getattr(target, name), getattr(donor, name)
        setattr(target, name, theirs)
        setattr(donor, name, mine)
    if cursor is not None and hasattr(cursor, "_connection"):
        cursor._connection = target._connection
