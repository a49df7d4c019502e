"""The HTTP pool's retry budget against a failing local upstream (issue 17).

Every request to ``/drop`` fails (the upstream closes the connection without
answering) and is safe to retry (GET), so the retry policy alone sends
``max_attempts`` requests for each one. The budget caps the upstream's load at
its share of the requests (20 %) plus the floor (``min_per_second`` x 10 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

import resync
from resync.core.exceptions import HTTPDeadlineExceededError, HTTPProtocolError
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.pools.manager.specs import build_pool, pool_specs
from resync.core.resilience import RetryPolicy
from resync.core.retry_budget import RetryBudget
from resync.settings import Settings
from tests.helpers.upstream import Upstream

REQUESTS = 200
ATTEMPTS = 5


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as running:
        yield running


def failing_pool(upstream: Upstream, budget: RetryBudget | bool) -> HTTPConnectionPool:
    config = ConnectionPoolConfig(pool_name="budget", min_size=0, max_size=10, connection_timeout=5)
    return HTTPConnectionPool(
        config,
        upstream.url,
        circuit_breaker=False,
        retry=RetryPolicy(max_attempts=ATTEMPTS, initial_backoff=0.0, max_backoff=0.0),
        retry_budget=budget,
    )


async def hammer(pool: HTTPConnectionPool) -> int:
    """REQUESTS failing GETs, 10 at a time; returns how many failed (all must)."""
    failed = 0

    async def one() -> None:
        nonlocal failed
        try:
            async with pool.get_connection() as client:
                await client.get("/drop")
        except HTTPProtocolError:
            failed += 1

    for _ in range(REQUESTS // 10):
        await asyncio.gather(*(one() for _ in range(10)))
    return failed


@pytest.mark.parametrize(("floor", "extra"), [(0.0, 0), (10.0, 100)])
async def test_a_failing_upstream_gets_at_most_its_share_of_retries(
    upstream: Upstream, floor: float, extra: int
) -> None:
    pool = failing_pool(upstream, RetryBudget(percent=20, min_per_second=floor))
    await pool.initialize()
    try:
        assert await hammer(pool) == REQUESTS
    finally:
        await pool.close()
    sent = upstream.count("/drop")
    # 1.2 x the requests plus the floor's reserve (100 over the 10 s window).
    assert REQUESTS < sent <= REQUESTS * 1.2 + extra + 1
    http = pool.get_stats_snapshot()["http"]
    assert http["requests"] == REQUESTS
    assert http["retries"] == sent - REQUESTS
    assert http["retries_refused"] > 0
    assert http["retry_budget"]["percent"] == 20 and http["retry_budget"]["min_per_second"] == floor


async def test_without_a_budget_the_policy_alone_multiplies_the_load(upstream: Upstream) -> None:
    pool = failing_pool(upstream, False)
    await pool.initialize()
    try:
        assert await hammer(pool) == REQUESTS
    finally:
        await pool.close()
    assert upstream.count("/drop") == REQUESTS * ATTEMPTS
    http = pool.get_stats_snapshot()["http"]
    assert http["retries_refused"] == 0 and http["retry_budget"] is None


async def test_a_budget_with_room_leaves_retries_as_they_were(upstream: Upstream) -> None:
    pool = failing_pool(upstream, True)  # the default budget: 100 retries in reserve
    await pool.initialize()
    try:
        with pytest.raises(HTTPProtocolError):
            async with pool.get_connection() as client:
                await client.get("/drop")
    finally:
        await pool.close()
    assert upstream.count("/drop") == ATTEMPTS


async def test_retries_and_their_backoff_end_by_the_callers_deadline(upstream: Upstream) -> None:
    config = ConnectionPoolConfig(pool_name="budget", min_size=0, max_size=2, connection_timeout=5)
    pool = HTTPConnectionPool(
        config,
        upstream.url,
        circuit_breaker=False,
        retry=RetryPolicy(max_attempts=10, initial_backoff=1.0, max_backoff=1.0),
    )
    await pool.initialize()
    try:
        started = time.monotonic()
        with resync.deadline(0.2), pytest.raises(HTTPDeadlineExceededError):
            async with pool.get_connection() as client:
                await client.get("/drop")
        assert time.monotonic() - started < 0.7  # not 10 attempts with up to 1 s between
    finally:
        await pool.close()
    assert upstream.count("/drop") < 10


def test_settings_set_the_budget_of_the_http_pools() -> None:
    settings = Settings(
        TWS_BASE_URL="http://127.0.0.1:1",
        HTTP_RETRY_BUDGET_PERCENT=5,
        HTTP_RETRY_BUDGET_MIN_PER_SECOND=0.5,
    )
    (spec,) = [spec for spec in pool_specs(settings) if spec.backend == "http"]
    pool: Any = build_pool(spec)
    assert isinstance(pool, HTTPConnectionPool)
    assert pool.retry_budget is not None
    assert (pool.retry_budget.percent, pool.retry_budget.min_per_second) == (5.0, 0.5)


def test_a_retry_budget_of_the_wrong_type_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="retry_budget of pool 'budget' must be a RetryBudget"):
        HTTPConnectionPool(
            ConnectionPoolConfig(pool_name="budget"),
            "http://127.0.0.1:1",
            retry_budget=0.2,  # type: ignore[arg-type]
        )
