"""Tripwire: the SQLAlchemy private members resync relies on still exist.

If this fails after a SQLAlchemy upgrade, resync stays correct (it falls back
to a ping at checkout and to discarding connections whose options changed) but
loses the free checkout check: update resync/core/pools/database/sqla_internals.py.
"""

from __future__ import annotations

import inspect
from collections import deque

from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.pool.base import _ConnectionRecord

from resync.core.pools.database.sqla_internals import begin_hook, undo_callbacks


def test_the_asyncpg_adapter_still_has_start_transaction() -> None:
    hook = getattr(AsyncAdapt_asyncpg_connection, "_start_transaction", None)
    assert hook is not None and inspect.iscoroutinefunction(hook)


def test_connection_records_still_queue_undo_callbacks_in_a_deque() -> None:
    assert "finalize_callback" in _ConnectionRecord.__slots__ or hasattr(
        _ConnectionRecord, "__annotations__"
    )
    assert "finalize_callback" in inspect.getsource(_ConnectionRecord.__init__)


def test_the_accessors_fall_back_instead_of_failing() -> None:
    class Bare:
        pass

    assert begin_hook(Bare()) is None
    assert undo_callbacks(Bare()) is None

    class Record:
        finalize_callback: deque[object] = deque()

    class Pooled:
        _connection_record = Record()

    assert undo_callbacks(Pooled()) is Record.finalize_callback
