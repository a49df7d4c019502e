"""Test helpers for resync users and for resync's own suite."""

from __future__ import annotations

from resync.testing.memory_pool import InMemoryConnection, InMemoryPool

__all__ = ["InMemoryConnection", "InMemoryPool"]
