"""Fixtures shared by the whole suite.

The suite talks to real servers: PostgreSQL at 127.0.0.1:5432 (database
``test``) and Redis at 127.0.0.1:6379 (database 15, flushed around each test
that uses it). ``make test`` makes sure both are up before pytest starts; a
test that needs one and cannot reach it fails -- it never skips silently.
Override the addresses with RESYNC_TEST_PG_URL and RESYNC_TEST_REDIS_URL.
"""

from __future__ import annotations

import os

import pytest

PG_URL = os.environ.get("RESYNC_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RESYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def pg_url() -> str:
    """SQLAlchemy URL of the shared PostgreSQL test database."""
    return PG_URL


@pytest.fixture
def redis_url() -> str:
    """URL of the shared Redis, on a database number reserved for tests."""
    return REDIS_URL
