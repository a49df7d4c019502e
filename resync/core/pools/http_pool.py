"""The seed's contract path for the HTTP pool.

The real home is :mod:`resync.core.pools.http.pool`; this module only
re-exports it. ``httpx`` is bound here as the seed's module had it.
"""

from __future__ import annotations

import httpx

from resync.core.pools.http.pool import HTTPConnectionPool
from resync.core.pools.kernel.config import ConnectionPoolConfig

__all__ = ["ConnectionPoolConfig", "HTTPConnectionPool", "httpx"]
