"""A scriptable HTTP/1.1 upstream for tests and benchmarks.

It runs on its own event loop in a background thread (or, with ``python -m
tests.helpers.upstream``, in its own process), so the code under test can
neither stall it nor share its loop. It counts every request it receives --
tests prove "no network traffic" by reading the counters.

Routes (any method):

- ``/`` and ``/ok``      200 ``ok``
- ``/status/<code>``     that status
- ``/fail``              500
- ``/slow?seconds=<s>``  200 after sleeping
- ``/hang``              never answers (until the client or the server closes)
- ``/drop``              closes the connection without answering
- ``/echo``              200, body ``<METHOD> <body>``

``failing = True`` makes every route answer 500 (an upstream outage that can be
healed by setting it back to False). ``tls=`` (a server ``ssl.SSLContext``)
serves HTTPS instead.

    with Upstream() as upstream:
        httpx.get(upstream.url + "/ok"); assert upstream.requests == 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import threading
from collections import Counter
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from tests.helpers.net import free_port

__all__ = ["Upstream"]

_REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}


def _response(status: int, body: bytes = b"", *, close: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
        f"content-type: text/plain\r\ncontent-length: {len(body)}\r\n"
    )
    if close:
        head += "connection: close\r\n"
    return head.encode() + b"\r\n" + body


class Upstream:
    """The server; ``url`` is its base URL, ``requests``/``paths`` its counters."""

    def __init__(self, port: int | None = None, *, tls: ssl.SSLContext | None = None) -> None:
        self.port = port or free_port()
        self.tls = tls
        self.url = f"{'https' if tls is not None else 'http'}://127.0.0.1:{self.port}"
        self.failing = False
        self.requests = 0
        self.connections = 0
        #: Connections open right now (a gauge; ``reset_counts`` leaves it).
        self.open_connections = 0
        self.paths: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    def count(self, path: str) -> int:
        """Requests received for ``path`` (query string excluded)."""
        return self.paths[path]

    def reset_counts(self) -> None:
        """Zero every counter."""
        self.requests = 0
        self.connections = 0
        self.paths.clear()

    # --- lifecycle (called from the test's thread) ------------------------------------

    def start(self) -> None:
        """Start the loop thread and listen; returns once the port accepts."""
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="upstream", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), loop).result(10)

    def stop(self) -> None:
        """Close every connection, stop the loop and join the thread."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            loop.close()

    def __enter__(self) -> Upstream:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- server side (runs on the upstream's own loop) -------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, ssl=self.tls
        )

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        self.open_connections += 1
        try:
            while await self._serve_one(reader, writer):
                pass
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # ssl.SSLError: a client that refused our certificate
        finally:
            self._handlers.discard(task)
            self.open_connections -= 1
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection must end."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await self._read_body(reader, headers)
        parts = urlsplit(target)
        self.requests += 1
        self.paths[parts.path] += 1
        close = headers.get("connection", "").lower() == "close"
        path = parts.path
        if path == "/drop":
            return False
        if path == "/hang":
            await reader.read()  # until the client gives up or the server stops
            return False
        if self.failing:
            status, payload = 500, b"upstream failing"
        elif path in ("/", "/ok"):
            status, payload = 200, b"ok"
        elif path == "/fail":
            status, payload = 500, b"failure"
        elif path.startswith("/status/"):
            status, payload = int(path.rsplit("/", 1)[1]), b""
        elif path == "/slow":
            seconds = float(parse_qs(parts.query).get("seconds", ["1"])[0])
            await asyncio.sleep(seconds)
            status, payload = 200, b"slow"
        elif path == "/echo":
            status, payload = 200, method.encode() + b" " + body
        else:
            status, payload = 404, b"no such route"
        writer.write(_response(status, payload, close=close))
        await writer.drain()
        return not close

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "content-length" in headers:
            return await reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk[:-2])
        return b""


def main() -> None:
    """Serve until interrupted (the benchmark runs it as a separate process)."""
    parser = argparse.ArgumentParser(description="resync test upstream")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    upstream = Upstream(args.port)

    async def serve() -> None:
        await upstream._listen()
        print(f"listening on {upstream.url}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
