"""One worker subprocess, seen from the pool: start, request, check, reset, close.

A request whose answer was not read in full -- the caller timed out or was
cancelled, the pipe broke, the worker died -- leaves the worker *poisoned*: an
answer may still be on its way and would be read by the next caller. A poisoned
worker fails :meth:`Worker.reset` and :meth:`Worker.check`, so the pool closes
it, and :meth:`Worker.close` kills it at once instead of asking it to exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from resync.core.exceptions import ResourceBroken

__all__ = ["WORKER_SCRIPT", "Worker", "WorkerDied", "WorkerError"]

WORKER_SCRIPT = Path(__file__).with_name("worker.py")


class WorkerDied(ResourceBroken):
    """The worker process died or broke the protocol mid-request; the pool replaces it."""


class WorkerError(Exception):
    """The worker answered with an error; the worker itself is fine and is reused."""


class Worker:
    """A running ``worker.py`` and the line-delimited JSON conversation with it."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid
        self.requests = 0
        self.poisoned = False

    def __repr__(self) -> str:
        state = "poisoned" if self.poisoned else "ok" if self.alive else "exited"
        return f"<Worker pid={self.pid} {state} requests={self.requests}>"

    @property
    def alive(self) -> bool:
        """True until the process is known to have exited."""
        return self.process.returncode is None

    @classmethod
    async def start(cls) -> Worker:
        """Start a worker and wait for its "ready" line (the pool bounds the wait).

        If the wait is cancelled or the worker does not say ready, it is killed
        and reaped before the error propagates: a failed start leaves no process.
        """
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-u",
            str(WORKER_SCRIPT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        worker = cls(process)
        try:
            assert process.stdout is not None
            hello = json.loads(await process.stdout.readline() or b"{}")
            if not hello.get("ready"):
                raise WorkerDied(f"worker {process.pid} exited before it was ready")
        except BaseException:
            worker.poisoned = True
            await asyncio.shield(worker.close())
            raise
        return worker

    async def request(self, op: str, **args: Any) -> Any:
        """Send one request and return its result.

        Raises :class:`WorkerError` when the worker answers with an error, and
        :class:`WorkerDied` (a ``ResourceBroken``) when it dies, closes its
        pipes or answers nonsense. Timeout and cancellation are the caller's
        (``asyncio.timeout``); they leave the worker poisoned.
        """
        if self.poisoned:
            raise WorkerDied(f"worker {self.pid} is unusable after an interrupted request")
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        self.requests += 1
        ident = self.requests
        self.poisoned = True  # until the whole answer is read
        try:
            stdin.write(json.dumps({"id": ident, "op": op, "args": args}).encode() + b"\n")
            await stdin.drain()
            line = await stdout.readline()
        except (ConnectionError, OSError) as exc:
            raise WorkerDied(f"worker {self.pid} died mid-request ({exc})") from exc
        if not line:
            raise WorkerDied(f"worker {self.pid} died mid-request (its stdout closed)")
        try:
            reply = json.loads(line)
            ok, answer_id = reply["ok"], reply["id"]
        except (ValueError, KeyError, TypeError) as exc:
            raise WorkerDied(f"worker {self.pid} broke the protocol: {line[:80]!r}") from exc
        if answer_id != ident:
            raise WorkerDied(f"worker {self.pid} answered request {answer_id}, not {ident}")
        self.poisoned = False
        if not ok:
            raise WorkerError(reply.get("error", "unknown error"))
        return reply.get("result")

    async def check(self) -> bool:
        """The pool's ``validate``: alive, not poisoned, and answers a ping within a second."""
        if self.poisoned or not self.alive:
            return False
        try:
            async with asyncio.timeout(1.0):
                return bool(await self.request("ping") == "pong")
        except (TimeoutError, WorkerDied, WorkerError):
            return False

    async def reset(self) -> None:
        """The pool's ``reset``: refuse a poisoned worker, so the pool closes it."""
        if self.poisoned:
            raise WorkerDied(f"worker {self.pid} was returned mid-request")

    async def close(self, grace: float = 2.0) -> None:
        """End the process and reap it (no zombie is left).

        A healthy worker is asked to exit (stdin closed) and killed if it has
        not within ``grace`` seconds; a poisoned one is killed at once.
        Cancelling the caller does not stop the reaping: it runs shielded.
        """
        await asyncio.shield(self._stop(grace))

    async def _stop(self, grace: float) -> None:
        process = self.process
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        if process.returncode is None:
            if self.poisoned:
                _kill(process)
            try:
                async with asyncio.timeout(grace):
                    await process.wait()
            except TimeoutError:
                _kill(process)
        await process.wait()


def _kill(process: asyncio.subprocess.Process) -> None:
    # Not process.kill(): Popen polls first and may reap the child itself, and
    # asyncio's child watcher then reports exit status 255 instead of the real one.
    with contextlib.suppress(ProcessLookupError):  # it exited in the meantime
        os.kill(process.pid, signal.SIGKILL)
