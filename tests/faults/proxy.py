"""A TCP proxy that breaks the network on command, for fault tests.

It sits between a pool and its server (PostgreSQL, Redis, an HTTP upstream)
and runs on its own event loop in its own thread, so the code under test can
neither stall it nor share its loop. Every control is thread-safe and takes
effect before it returns::

    with FaultProxy(("127.0.0.1", 5432)) as proxy:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/test"
        proxy.blackhole()          # sockets stay open, nothing moves
        proxy.heal()               # everything flows again (held data too)
        proxy.reset_all()          # RST on both sides of every connection
        proxy.wait_for_sockets(0)  # leak check: no connection left open

Faults:

- ``set_latency(to_server=, to_client=)``: each chunk is held that long;
- ``blackhole()``: nothing is forwarded in either direction, EOFs included,
  and new connections are accepted but not connected onward -- a network
  partition; ``heal()`` delivers what was held, as TCP would after one;
- ``close_all()`` (FIN) / ``reset_all()`` (RST, ``SO_LINGER`` 0): both sides of
  every open connection, as a server restart or a middlebox would;
- ``refuse_new()``: stop listening, so connects fail with ECONNREFUSED;
- ``hang_new()``: accept new connections and never answer them;
- ``cut_after(n)``: forward ``n`` more bytes in one direction on each
  connection, then reset (or close) it;
- ``set_target()``: new connections go elsewhere (a failover).

``client_sockets`` / ``server_sockets`` count the proxy's open sockets to the
clients and to the server, to assert that nothing leaked.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Literal, TypeVar

__all__ = ["Direction", "FaultProxy"]

Direction = Literal["to_server", "to_client"]
T = TypeVar("T")

_CHUNK = 65536
_CONTROL_TIMEOUT = 10.0


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST: linger 0 makes the kernel drop the connection at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: the client's socket, the server's, two pumps."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.budget: dict[Direction, int | None] = {"to_server": None, "to_client": None}
        self.cut_with_reset = True
        self.ended: set[Direction] = set()
        self.closed = False


class FaultProxy:
    """A fault-injecting TCP proxy on ``127.0.0.1:<port>``; see the module docstring."""

    def __init__(self, target: tuple[str, int], *, port: int = 0) -> None:
        self.target = target
        self.host = "127.0.0.1"
        self.port = port
        #: Open sockets between the proxy and its clients / the server.
        self.client_sockets = 0
        self.server_sockets = 0
        #: Connections accepted since start.
        self.accepted = 0
        self.bytes_to_server = 0
        self.bytes_to_client = 0
        self._latency: dict[Direction, float] = {"to_server": 0.0, "to_client": 0.0}
        self._hang_new = False
        self._refusing = False
        self._cut: tuple[Direction, int, bool] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.StreamWriter] = set()

    # --- lifecycle (any thread) ------------------------------------------------------

    def start(self) -> FaultProxy:
        """Start the proxy's thread and loop and listen; returns ``self``."""
        if self._loop is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"fault-proxy-{id(self):x}", daemon=True)
        self._thread.start()
        ready.wait(_CONTROL_TIMEOUT)
        self._call(self._setup())
        return self

    def stop(self) -> None:
        """Close every connection (RST) and the listener, stop the thread; idempotent."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_CONTROL_TIMEOUT)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(_CONTROL_TIMEOUT)
            loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"<FaultProxy 127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]} "
            f"[{self.client_sockets} client / {self.server_sockets} server sockets]>"
        )

    # --- controls (any thread; each has taken effect when it returns) ----------------------

    def set_target(self, host: str, port: int) -> None:
        """Send new connections to ``host:port``; open ones keep their server."""
        self.target = (host, port)

    def set_latency(self, *, to_server: float = 0.0, to_client: float = 0.0) -> None:
        """Hold every chunk this many seconds before forwarding it, per direction."""
        self._latency = {"to_server": to_server, "to_client": to_client}

    def blackhole(self) -> None:
        """Stop forwarding anything (data, EOF, new connections); sockets stay open."""
        self._call(self._set_flowing(False))

    def hang_new(self) -> None:
        """Accept new connections but never connect them onward nor answer."""
        self._hang_new = True

    def refuse_new(self) -> None:
        """Stop listening: new connections are refused (ECONNREFUSED)."""
        self._call(self._set_refusing(True))

    def cut_after(self, nbytes: int, direction: Direction, *, reset: bool = True) -> None:
        """On every connection, forward ``nbytes`` more bytes towards ``direction``, then
        reset it (``reset=False``: close it with FIN). Also applies to new connections."""
        self._call(self._arm_cut(direction, nbytes, reset))

    def close_all(self) -> int:
        """Close both sides of every open connection with FIN; returns how many."""
        return self._call(self._kill_all(reset=False))

    def reset_all(self) -> int:
        """Reset both sides of every open connection (RST); returns how many."""
        return self._call(self._kill_all(reset=True))

    def heal(self) -> None:
        """Undo every fault: no latency, forwarding, listening, no hang, no cut."""
        self._latency = {"to_server": 0.0, "to_client": 0.0}
        self._hang_new = False
        self._call(self._heal())

    # --- observation -------------------------------------------------------------------

    def wait_for_sockets(
        self, client: int | None = 0, server: int | None = None, timeout: float = 5.0
    ) -> None:
        """Block until the open socket counts are as given (None: any); else AssertionError.

        ``server`` defaults to ``client``: a proxied connection has one of each.
        """
        if server is None:
            server = client
        deadline = time.monotonic() + timeout
        while not (
            (client is None or self.client_sockets == client)
            and (server is None or self.server_sockets == server)
        ):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"proxy has {self.client_sockets} client / {self.server_sockets} server "
                    f"sockets open after {timeout}s, expected {client} / {server}"
                )
            time.sleep(0.02)

    async def wait_for_sockets_async(
        self, client: int | None = 0, server: int | None = None, timeout: float = 5.0
    ) -> None:
        """:meth:`wait_for_sockets` for async tests, without blocking their loop."""
        await asyncio.to_thread(self.wait_for_sockets, client, server, timeout)

    # --- the proxy's loop ------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("the fault proxy is not running: call start() first")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(_CONTROL_TIMEOUT)

    async def _setup(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_refusing(self, refusing: bool) -> None:
        if refusing and self._server is not None:
            self._server.close()
            self._server = None
        elif not refusing and self._server is None:
            await self._listen()
        self._refusing = refusing

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _arm_cut(self, direction: Direction, nbytes: int, reset: bool) -> None:
        self._cut = (direction, nbytes, reset)
        for link in self._links:
            link.budget[direction] = nbytes
            link.cut_with_reset = reset

    async def _heal(self) -> None:
        self._cut = None
        for link in self._links:
            link.budget = {"to_server": None, "to_client": None}
        await self._set_refusing(False)
        await self._set_flowing(True)

    async def _kill_all(self, *, reset: bool) -> int:
        links = list(self._links)
        for link in links:
            self._end(link, reset=reset)
        return len(links)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._kill_all(reset=True)
        tasks = list(self._handlers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Let every transport finish closing its socket before the loop goes away.
        await asyncio.gather(*(w.wait_closed() for w in self._closing), return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self._flowing is not None
        self._handlers.add(task)
        self.accepted += 1
        self.client_sockets += 1
        link = _Link(writer)
        if self._cut is not None:
            direction, nbytes, link.cut_with_reset = self._cut
            link.budget[direction] = nbytes
        self._links.add(link)
        try:
            if self._hang_new:
                await reader.read()  # hold the socket until the client gives up
                return
            await self._flowing.wait()  # a partition: the connect goes nowhere yet
            try:
                server_reader, server = await asyncio.wait_for(
                    asyncio.open_connection(*self.target), _CONTROL_TIMEOUT
                )
            except (OSError, TimeoutError):
                self._end(link, reset=True)  # the client sees what the server did
                return
            if link.closed:  # killed while connecting
                _reset(server)
                return
            link.server = server
            self.server_sockets += 1
            link.tasks = {
                asyncio.create_task(self._pump(link, reader, server, "to_server")),
                asyncio.create_task(self._pump(link, server_reader, writer, "to_client")),
            }
            await asyncio.gather(*link.tasks, return_exceptions=True)
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            self._end(link, reset=False)
            self._handlers.discard(task)

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Direction,
    ) -> None:
        flowing = self._flowing
        assert flowing is not None
        try:
            while True:
                await flowing.wait()
                data = await reader.read(_CHUNK)
                delay = self._latency[direction]
                if delay:
                    await asyncio.sleep(delay)
                await flowing.wait()  # read before a partition began: held, not lost
                if not data:
                    break
                budget = link.budget[direction]
                if budget is not None and len(data) >= budget:
                    self._count(direction, budget)
                    writer.write(data[:budget])
                    with contextlib.suppress(ConnectionError, OSError):
                        await writer.drain()
                    self._end(link, reset=link.cut_with_reset)
                    return
                if budget is not None:
                    link.budget[direction] = budget - len(data)
                self._count(direction, len(data))
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()  # pass the half-close on, as TCP does
        except (ConnectionError, OSError):
            await flowing.wait()  # a partition would not carry the reset either
            self._end(link, reset=True)  # one side reset: reset the other
            return
        link.ended.add(direction)
        if len(link.ended) == 2:
            self._end(link, reset=False)

    def _count(self, direction: Direction, nbytes: int) -> None:
        if direction == "to_server":
            self.bytes_to_server += nbytes
        else:
            self.bytes_to_client += nbytes

    def _end(self, link: _Link, *, reset: bool) -> None:
        """Close both sockets of ``link`` (RST or FIN) and stop its pumps; idempotent."""
        if link.closed:
            return
        link.closed = True
        self._links.discard(link)
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()
        for writer, counter in ((link.client, "client_sockets"), (link.server, "server_sockets")):
            if writer is None:
                continue
            setattr(self, counter, getattr(self, counter) - 1)
            self._closing.add(writer)
            if reset:
                _reset(writer)
            else:
                writer.close()
