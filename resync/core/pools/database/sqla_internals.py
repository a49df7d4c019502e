"""The two private members of SQLAlchemy resync relies on, in one place.

resync keeps its own connections under SQLAlchemy (``NullPool``), so two
things SQLAlchemy does only inside its own pool are done here instead:

- :func:`begin_hook`: the asyncpg adapter's ``_start_transaction``, which
  sends the transaction's ``BEGIN`` now instead of with the first statement
  -- the checkout's free liveness check (the round trip the lease makes
  anyway);
- :func:`undo_callbacks`: the ``finalize_callback`` list of a connection's
  ``_ConnectionRecord``, where SQLAlchemy queues the undo of connection
  characteristics (isolation level ...) for its pool's check-in, which a
  connection resync holds never reaches.

Both are read with ``getattr`` and a fallback (no BEGIN at checkout: ping
instead; no undo list: discard the connection), so a SQLAlchemy release that
renames them costs speed, never correctness. ``tests/unit/test_sqla_internals.py``
fails loudly when the installed SQLAlchemy no longer has them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["begin_hook", "undo_callbacks"]


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
