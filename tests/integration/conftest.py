"""Fixtures of the integration tests beside the suite's (tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest


@pytest.fixture
async def admin(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw asyncpg connection to the shared PostgreSQL, outside any pool."""
    conn = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
    yield conn
    await conn.close()


@pytest.fixture
async def table(admin: asyncpg.Connection) -> AsyncIterator[str]:
    """A fresh one-column table ``(v text)``, dropped afterwards."""
    name = f"scratch_{uuid.uuid4().hex[:10]}"
    await admin.execute(f"CREATE TABLE {name} (v text)")
    yield name
    await admin.execute(f"DROP TABLE IF EXISTS {name}")
