"""A request cancelled while waiting for a new connection costs the HTTP pool nothing.

httpcore 1.0 loses a slot to such a request (encode/httpcore#1093): the
connection it was handed stays in the pool, never opened and never reaped,
until every slot is gone and each request fails with ``PoolTimeout``. The
cancellation fuzz found it; this pins the exact sequence down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.http.httpcore_state import reclaim_orphaned_connections
from resync.core.pools.http_pool import HTTPConnectionPool
from tests.helpers.upstream import Upstream


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


async def test_request_cancelled_while_handed_a_new_connection_does_not_cost_a_slot(
    upstream: Upstream,
) -> None:
    config = ConnectionPoolConfig(
        pool_name="one-slot", min_size=0, max_size=1, connection_timeout=1.0
    )
    pool = HTTPConnectionPool(config, upstream.url)
    async with pool, pool.get_connection() as client:
        queued: asyncio.Task[httpx.Response] | None = None

        async def dropped_then_cancel_the_next() -> None:
            # /drop closes the only connection; httpcore hands a new one to
            # the queued request, which is cancelled before it can run.
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post("/drop", content=b"not retried")
            assert queued is not None
            queued.cancel()

        first = asyncio.create_task(dropped_then_cancel_the_next())
        await asyncio.sleep(0)  # the POST takes the connection first
        queued = asyncio.create_task(client.get("/ok"))
        await first
        with pytest.raises(asyncio.CancelledError):
            await queued
        inner = pool._transport.inner._pool  # type: ignore[union-attr]
        assert inner.connections == []  # nothing left "CONNECTING" for nobody
        # The one slot is free: this does not wait for the 1 s pool timeout.
        assert (await client.get("/ok")).status_code == 200


async def test_reclaiming_leaves_other_transports_alone() -> None:
    assert reclaim_orphaned_connections(object()) == 0
    async with httpx.AsyncHTTPTransport() as transport:
        assert reclaim_orphaned_connections(transport) == 0


async def test_requests_cancelled_again_during_their_cleanup_do_not_cost_slots(
    upstream: Upstream,
) -> None:
    # httpcore shields its clean-up with anyio, which a native task.cancel()
    # goes through: a second cancellation cuts it short. Every point of the
    # exchange is hit by moving the first cancellation one step further each time.
    config = ConnectionPoolConfig(
        pool_name="two-slots", min_size=0, max_size=2, connection_timeout=1.0
    )
    loop = asyncio.get_running_loop()
    pool = HTTPConnectionPool(config, upstream.url)
    async with pool, pool.get_connection() as client:

        async def cancel_twice(task: asyncio.Task[object], delay: int) -> None:
            for _ in range(delay):
                await asyncio.sleep(0)
            task.cancel()
            loop.call_soon(task.cancel)

        for delay in range(40):
            for _ in range(5):
                requests = [
                    asyncio.create_task(client.post("/echo", content=b"x")) for _ in range(3)
                ]
                cancellers = [asyncio.create_task(cancel_twice(t, delay)) for t in requests]
                await asyncio.gather(*requests, *cancellers, return_exceptions=True)
        inner = pool._transport.inner._pool  # type: ignore[union-attr]
        assert inner._requests == []
        assert len(inner.connections) <= 2
        # Both slots are free: two requests at once, neither waits for the pool timeout.
        answers = await asyncio.gather(*(client.post("/echo", content=b"y") for _ in range(2)))
        assert [a.text for a in answers] == ["POST y", "POST y"]
