"""The fault proxy itself: each control does what the fault tests rely on."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.faults.proxy import FaultProxy


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, int]]:
    """An echo server on the test's loop; its handlers end with the test."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the test is over; asyncio would log a cancelled handler as an error
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield "127.0.0.1", server.sockets[0].getsockname()[1]
    server.close()
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    await server.wait_closed()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> AsyncIterator[FaultProxy]:
    with FaultProxy(echo) as running:
        yield running


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def client(proxy: FaultProxy) -> AsyncIterator[Streams]:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def round_trip(streams: Streams, payload: bytes = b"ping", timeout: float = 2.0) -> bytes:
    reader, writer = streams
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), timeout)


async def test_forwards_both_ways_and_counts_its_sockets(proxy: FaultProxy) -> None:
    async with client(proxy) as streams:
        assert await round_trip(streams) == b"ping"
        assert (proxy.client_sockets, proxy.server_sockets) == (1, 1)
    await proxy.wait_for_sockets_async(0)
    assert proxy.accepted == 1
    assert proxy.bytes_to_server == proxy.bytes_to_client == 4


async def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    async with client(proxy) as streams:
        proxy.set_latency(to_server=0.2, to_client=0.1)
        started = time.monotonic()
        assert await round_trip(streams) == b"ping"
        assert time.monotonic() - started >= 0.3
        proxy.heal()
        started = time.monotonic()
        await round_trip(streams)
        assert time.monotonic() - started < 0.3


async def test_blackhole_holds_data_and_connections_until_healed(proxy: FaultProxy) -> None:
    async with client(proxy) as streams:
        await round_trip(streams)
        proxy.blackhole()
        with pytest.raises(TimeoutError):
            await round_trip(streams, timeout=0.3)
        async with client(proxy) as late:
            # Accepted, but not connected onward during the partition.
            await proxy.wait_for_sockets_async(client=2, server=1)
            proxy.heal()
            assert await asyncio.wait_for(streams[0].readexactly(4), 2) == b"ping"
            assert await round_trip(late, b"late") == b"late"
    await proxy.wait_for_sockets_async(0)


async def test_close_all_ends_every_connection_with_eof(proxy: FaultProxy) -> None:
    async with client(proxy) as streams:
        await round_trip(streams)
        assert proxy.close_all() == 1
        assert await asyncio.wait_for(streams[0].read(), 2) == b""
    await proxy.wait_for_sockets_async(0)


async def test_reset_all_resets_every_connection(proxy: FaultProxy) -> None:
    async with client(proxy) as streams:
        await round_trip(streams)
        assert proxy.reset_all() == 1
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(streams[0].read(), 2)
    await proxy.wait_for_sockets_async(0)


async def test_refuse_new_stops_listening_until_healed(proxy: FaultProxy) -> None:
    proxy.refuse_new()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(proxy.host, proxy.port)
    proxy.heal()
    async with client(proxy) as streams:
        assert await round_trip(streams) == b"ping"


async def test_hang_new_accepts_and_never_answers(proxy: FaultProxy) -> None:
    proxy.hang_new()
    async with client(proxy) as streams:
        with pytest.raises(TimeoutError):
            await round_trip(streams, timeout=0.3)
        await proxy.wait_for_sockets_async(client=1, server=0)
    await proxy.wait_for_sockets_async(0)


async def test_cut_after_forwards_exactly_n_bytes_then_closes(proxy: FaultProxy) -> None:
    async with client(proxy) as streams:
        proxy.cut_after(5, "to_client", reset=False)
        streams[1].write(b"0123456789")
        assert await asyncio.wait_for(streams[0].read(), 2) == b"01234"
    await proxy.wait_for_sockets_async(0)


async def test_set_target_moves_new_connections_only(
    proxy: FaultProxy, echo: tuple[str, int]
) -> None:
    async with client(proxy) as streams:
        await round_trip(streams)  # connected onward before the move
        proxy.set_target("127.0.0.1", 1)  # nothing listens on port 1
        assert await round_trip(streams) == b"ping"  # the open one keeps its server
        # The proxy resets the client as the server refused it: that may even
        # beat the client's own connect call.
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            async with client(proxy) as moved:
                await round_trip(moved)
        proxy.set_target(*echo)


def test_stop_closes_everything_and_is_idempotent(echo: tuple[str, int]) -> None:
    proxy = FaultProxy(echo).start()
    port = proxy.port
    proxy.stop()
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        __import__("socket").create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(RuntimeError, match="not running"):
        proxy.blackhole()
