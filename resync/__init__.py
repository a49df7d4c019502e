"""resync: one asyncio layer for every outbound connection of a FastAPI service."""

from __future__ import annotations

from resync.core.deadlines import Deadline, current_deadline, deadline, time_left

__all__ = ["Deadline", "__version__", "current_deadline", "deadline", "time_left"]

__version__ = "0.1.0"
