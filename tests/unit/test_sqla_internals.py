"""Tripwire: the SQLAlchemy private members resync relies on still exist.

If this fails after a SQLAlchemy upgrade, resync stays correct (it falls back
to a ping at checkout and to discarding connections whose options changed) but
loses the free checkout check: update resync/core/pools/database/sqla_internals.py.
"""

from __future__ import annotations

import inspect
from collections import deque

from sqlalchemy.dialects.postgresql.asyncpg import (
    AsyncAdapt_asyncpg_connection,
    AsyncAdapt_asyncpg_cursor,
)
from sqlalchemy.pool.base import _ConnectionRecord

from resync.core.pools.database import sqla_internals
from resync.core.pools.database.sqla_internals import (
    begin_hook,
    can_swap,
    swap_driver_connections,
    undo_callbacks,
)


def test_the_asyncpg_adapter_still_has_start_transaction() -> None:
    hook = getattr(AsyncAdapt_asyncpg_connection, "_start_transaction", None)
    assert hook is not None and inspect.iscoroutinefunction(hook)


def test_connection_records_still_queue_undo_callbacks_in_a_deque() -> None:
    assert "finalize_callback" in _ConnectionRecord.__slots__ or hasattr(
        _ConnectionRecord, "__annotations__"
    )
    assert "finalize_callback" in inspect.getsource(_ConnectionRecord.__init__)


def test_the_adapter_still_keeps_what_a_swap_exchanges() -> None:
    # The adapter's slots (its instances have no __dict__) and the cursor's
    # connection, read by swap_driver_connections; and SQLAlchemy's await_.
    slots = {
        name
        for cls in AsyncAdapt_asyncpg_connection.__mro__
        for name in getattr(cls, "__slots__", ())
    }
    assert {"_connection", "_prepared_statement_cache", "_invalidate_schema_cache_asof"} <= slots
    cursor_slots = {
        name for cls in AsyncAdapt_asyncpg_cursor.__mro__ for name in getattr(cls, "__slots__", ())
    }
    assert "_connection" in cursor_slots
    assert "adapt_connection._prepare(" in inspect.getsource(AsyncAdapt_asyncpg_cursor)
    assert sqla_internals.await_ is not None


def test_a_swap_exchanges_the_driver_state_and_repoints_the_cursor() -> None:
    class Adapter:
        def __init__(self, tag: str) -> None:
            self._connection = f"conn-{tag}"
            self._prepared_statement_cache = f"cache-{tag}"
            self._invalidate_schema_cache_asof = tag

    class Cursor:
        _connection = "conn-dead"

    dead, fresh, cursor = Adapter("dead"), Adapter("fresh"), Cursor()
    assert can_swap(dead)
    swap_driver_connections(dead, fresh, cursor)
    assert (dead._connection, dead._prepared_statement_cache) == ("conn-fresh", "cache-fresh")
    assert (fresh._connection, fresh._invalidate_schema_cache_asof) == ("conn-dead", "dead")
    assert cursor._connection == "conn-fresh"


def test_the_accessors_fall_back_instead_of_failing() -> None:
    class Bare:
        pass

    assert begin_hook(Bare()) is None
    assert undo_callbacks(Bare()) is None
    assert not can_swap(Bare())

    class Record:
        finalize_callback: deque[object] = deque()

    class Pooled:
        _connection_record = Record()

    assert undo_callbacks(Pooled()) is Record.finalize_callback
