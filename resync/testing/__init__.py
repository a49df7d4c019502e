"""Test helpers for resync users and for resync's own suite.

Importable without pytest; the pytest plugin (fixtures and leak guards) is
:mod:`resync.testing.plugin`, loaded through the ``pytest11`` entry point.
"""

from __future__ import annotations

from resync.testing.leaks import Leak, LeakTracker
from resync.testing.memory_pool import InMemoryConnection, InMemoryPool

__all__ = ["InMemoryConnection", "InMemoryPool", "Leak", "LeakTracker"]
