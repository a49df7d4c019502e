"""The sandbox header of a server under test: ``X-Resync-Sandbox``.

An end-to-end test that drives a real ``resync serve`` process (a browser
test, a black-box API test) cannot share the test process's connection, so the
server keeps a sandbox of its own per sandbox id: every request carrying
``X-Resync-Sandbox: <id>`` runs its database leases in the server-side
:class:`~resync.core.pools.database.sandbox.Sandbox` of that id (opened on the
first such request), so the requests of one test see each other's committed
writes and nothing of them reaches the database. ``DELETE /_resync/sandbox``
with the header rolls it back and closes it -- the plugin's ``resync_sandbox``
fixture sends that when the test ends, to every server it was shared with
(``resync_sandbox.share(base_url)`` returns the header to send).

Honoured only when the settings say ``RESYNC_TEST_SANDBOX=true`` (which the
settings refuse unless ``HOST`` is a loopback address): otherwise
:func:`install_sandbox_header` installs nothing and the header means nothing.
A sandbox nobody used for ``idle_timeout`` seconds (default 60: a test that
crashed before its teardown) is rolled back and closed; so is every sandbox
when the app shuts down (lifespan shutdown). A header that is not a sandbox id
(16 to 64 URL-safe characters) is answered 400 ``bad_sandbox_id``.

What the test process itself writes through its own pools stays in *its*
sandbox, which the server cannot see: seed a server under test through its
own API (with the header), or outside any sandbox and clean up after.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI

from resync.core.pools.database.sandbox import SANDBOX_HEADER, Sandbox
from resync.core.pools.manager.specs import read_setting

__all__ = ["HEADER", "SandboxHeaderMiddleware", "install_sandbox_header"]

logger = logging.getLogger("resync.api")

#: The request header that names a test sandbox.
HEADER = SANDBOX_HEADER
#: Where a test ends its sandbox on the server (``DELETE``, with the header).
END_PATH = "/_resync/sandbox"

_HEADER_KEY = HEADER.lower().encode()
_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def install_sandbox_header(app: FastAPI, settings: Any, *, idle_timeout: float = 60.0) -> bool:
    """Honour ``X-Resync-Sandbox`` on ``app`` if ``settings`` enable it.

    Returns whether it did (``RESYNC_TEST_SANDBOX`` true); logs a warning when it
    does, since every such request's writes are then rolled back. Call before
    the app starts.
    """
    if not read_setting(settings, "RESYNC_TEST_SANDBOX", False):
        return False
    app.add_middleware(SandboxHeaderMiddleware, idle_timeout=idle_timeout)
    logger.warning(
        "RESYNC_TEST_SANDBOX is on: requests carrying %s run in a test sandbox whose "
        "writes are rolled back; this is for tests only",
        HEADER,
    )
    return True


class SandboxHeaderMiddleware:
    """Pure ASGI middleware: runs a request with the header inside its sandbox.

    Timeouts: the sandbox's own (each lease within its pool's
    ``connection_timeout``); ``idle_timeout`` ends forgotten sandboxes.
    Cancellation of a request ends its lease as any cancellation does (its
    savepoint rolled back); the sandbox stays. Close: ``DELETE /_resync/sandbox``,
    the idle timeout or the app's lifespan shutdown roll back and close.
    """

    def __init__(self, app: ASGIApp, *, idle_timeout: float = 60.0) -> None:
        self.app = app
        self.idle_timeout = idle_timeout
        self._boxes: dict[str, Sandbox] = {}
        self._used: dict[str, float] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._closing_on_shutdown(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sandbox_id = _header(scope)
        if sandbox_id is None:
            await self.app(scope, receive, send)
            return
        if not _ID.match(sandbox_id):
            await _answer(send, 400, {"code": "bad_sandbox_id", "detail": f"bad {HEADER}"})
            return
        if scope["path"] == END_PATH and scope["method"] == "DELETE":
            ended = await self._end(sandbox_id)
            await _answer(send, 200 if ended else 404, {"ended": ended})
            return
        box = self._boxes.get(sandbox_id)
        if box is None or box.closed:
            box = self._boxes[sandbox_id] = Sandbox(f"server sandbox {sandbox_id[:6]}...")
            self._start_reaper()
        self._used[sandbox_id] = time.monotonic()
        token = box.activate()
        try:
            await self.app(scope, receive, send)
        finally:
            box.deactivate(token)
            self._used[sandbox_id] = time.monotonic()

    async def _end(self, sandbox_id: str) -> bool:
        box = self._boxes.pop(sandbox_id, None)
        self._used.pop(sandbox_id, None)
        if box is None:
            return False
        await box.close()
        return True

    def _closing_on_shutdown(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                await self.close_all()
            return message

        return wrapped

    async def close_all(self) -> None:
        """Roll back and close every sandbox, and stop the idle reaper."""
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.cancel()
            await asyncio.gather(reaper, return_exceptions=True)
        for sandbox_id in list(self._boxes):
            await self._end(sandbox_id)

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="resync-sandbox-reaper")

    async def _reap(self) -> None:
        tick = max(min(self.idle_timeout / 4, 5.0), 0.05)
        while self._boxes:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for sandbox_id, used in list(self._used.items()):
                if now - used > self.idle_timeout:
                    logger.warning(
                        "test sandbox %s... unused for %.0fs: rolled back",
                        sandbox_id[:6],
                        now - used,
                    )
                    await self._end(sandbox_id)


def _header(scope: Scope) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == _HEADER_KEY:
            return bytes(value).decode("latin-1")
    return None


async def _answer(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(payload)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
