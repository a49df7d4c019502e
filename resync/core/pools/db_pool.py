"""The seed's contract path for the database pool.

The real home is :mod:`resync.core.pools.database.pool`; this module only
re-exports it. Importing it imports SQLAlchemy (and the pool's drivers).
"""

from __future__ import annotations

from resync.core.pools.database.pool import DatabaseConnectionPool
from resync.core.pools.kernel.config import ConnectionPoolConfig

__all__ = ["ConnectionPoolConfig", "DatabaseConnectionPool"]
