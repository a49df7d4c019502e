"""The lifecycle states of a pool."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["PoolState"]


class PoolState(StrEnum):
    """Where a pool is in its lifecycle: new -> ready -> closing -> closed."""

    NEW = "new"
    READY = "ready"
    CLOSING = "closing"
    CLOSED = "closed"
