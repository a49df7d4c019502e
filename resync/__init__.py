"""resync: one asyncio layer for every outbound connection of a FastAPI service."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
