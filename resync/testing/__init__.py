"""Test helpers for resync users and for resync's own suite.

Importable without pytest; the pytest plugin (fixtures, leak guards and the
database sandbox) is :mod:`resync.testing.plugin`, loaded through the
``pytest11`` entry point. ``Sandbox`` and ``outside_sandbox`` come from
:mod:`resync.core.pools.database.sandbox`, imported on first use (so loading
the plugin imports no SQLAlchemy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resync.testing.leaks import Leak, LeakTracker
from resync.testing.memory_pool import InMemoryConnection, InMemoryPool

if TYPE_CHECKING:
    from resync.core.pools.database.sandbox import Sandbox, outside_sandbox

__all__ = [
    "InMemoryConnection",
    "InMemoryPool",
    "Leak",
    "LeakTracker",
    "Sandbox",
    "outside_sandbox",
]

_SANDBOX_NAMES = ("Sandbox", "outside_sandbox")


def __getattr__(name: str) -> Any:
    if name in _SANDBOX_NAMES:
        from resync.core.pools.database import sandbox

        return getattr(sandbox, name)
    raise AttributeError(f"module 'resync.testing' has no attribute {name!r}")
