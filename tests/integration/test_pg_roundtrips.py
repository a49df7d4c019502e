"""The benchmark's counting proxy (``benchmarks/pg_roundtrips.py``) counts what it should.

Against the shared PostgreSQL: a connection's start-up is counted apart, a
hot prepared ``fetchval('SELECT 1')`` is exactly one ReadyForQuery (one Sync,
no Query), a simple-protocol ``execute`` one Query, a transaction three
exchanges; and the framing survives messages split across reads.
"""

from __future__ import annotations

import struct

import asyncpg
import pytest

from benchmarks.pg_roundtrips import CountingProxy, WireParser, proxied_url

pytestmark = pytest.mark.postgres


async def test_the_framing_survives_a_stream_cut_anywhere() -> None:
    startup = struct.pack("!ii", 8 + 10, 196608) + b"user\0pg\0\0\0"
    query = b"Q" + struct.pack("!i", 4 + 9) + b"SELECT 1\0"
    sync = b"S" + struct.pack("!i", 4)
    stream = startup + query + sync
    parser = WireParser(typed=False)
    seen = [kind for byte in stream for kind, _ in parser.feed(bytes([byte]))]
    assert seen == ["", "Q", "S"]
    assert parser.pending() == b""


async def test_one_hot_select_is_one_round_trip(pg_url: str) -> None:
    async with CountingProxy(("127.0.0.1", 5432)) as proxy:
        dsn = proxied_url(pg_url, proxy.port).replace("+asyncpg", "")
        conn = await asyncpg.connect(dsn)  # asks for SSL first: the proxy says no
        try:
            assert (proxy.counts.connections, proxy.counts.startups) == (1, 1)
            assert proxy.counts.ready == 0  # the start-up's ReadyForQuery is not an exchange
            assert await conn.fetchval("SELECT 1") == 1  # cold: Parse/Describe, then Bind
            before = proxy.counts.copy()
            assert await conn.fetchval("SELECT 1") == 1
            hot = proxy.counts.since(before)
            assert (hot.ready, hot.to_server["S"], hot.to_server["Q"], hot.turns) == (1, 1, 0, 1)

            before = proxy.counts.copy()
            await conn.execute("SELECT 1")  # no arguments: the simple protocol
            simple = proxy.counts.since(before)
            assert (simple.ready, simple.to_server["Q"], simple.to_server["S"]) == (1, 1, 0)

            before = proxy.counts.copy()
            async with conn.transaction():
                await conn.execute("SELECT 1")
            assert proxy.counts.since(before).ready == 3  # BEGIN, SELECT 1, COMMIT
        finally:
            await conn.close()
