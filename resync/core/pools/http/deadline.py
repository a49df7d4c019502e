"""Upstream requests under the caller's deadline (``resync.deadline()``).

:class:`~resync.core.pools.http.transport.ResilientTransport` sends each
request of a lease through :func:`send_within` when a deadline is in force
(it reads the contextvar once per request; nothing else happens without
one):

- a request started after the deadline fails at once with the pool's
  :class:`~resync.core.exceptions.HTTPDeadlineExceededError`; nothing is
  sent and nothing counted;
- the request -- connect, write, every retry and its backoff, the wait for
  the answer's head -- runs under one ``asyncio.timeout`` of the time left,
  and the answer's body is read under the same deadline
  (:class:`DeadlineStream`): at the deadline the request is cancelled inside
  httpx (the connection, in an unknown state, is closed; its slot in
  httpcore is reclaimed) and the caller gets the deadline error.

Why one timeout and not httpx's per-request ``timeout=`` capped by the time
left: httpx's timeouts are per phase (connect, each read, each write, the
pool), so capped ones bound each phase but not their sum; and their expiry
is an upstream failure for the circuit breaker, while running out of the
caller's time says nothing about the upstream. A cancelled request records
no outcome. httpx's own timeouts still apply inside the deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

from resync.core.deadlines import DEADLINE, Deadline
from resync.core.pools.kernel.deadlines import out_of_time

__all__ = ["DeadlineStream", "send_within"]

#: The pool's deadline error for a deadline (``stage`` says what ran out).
DeadlineErrorFactory = Callable[[Deadline, str], Exception]


async def send_within(
    deadline: Deadline,
    send: Callable[[httpx.Request], Awaitable[httpx.Response]],
    request: httpx.Request,
    error: DeadlineErrorFactory,
) -> httpx.Response:
    """``await send(request)`` within ``deadline``; the body is bounded too.

    Raises ``error(deadline, ...)`` at once past the deadline, or when the
    deadline cut the request short (chained to nothing of httpx's: the
    request may carry credentials). Cancellation of the caller propagates.
    """
    if out_of_time(deadline):
        raise error(deadline, "before an upstream request")
    # The request itself runs with no deadline in its context: ``send`` reads
    # the contextvar again, and must take the plain path now.
    token = DEADLINE.set(None)
    try:
        async with asyncio.timeout(deadline.remaining()) as scope:
            response = await send(request)
    except (TimeoutError, httpx.TimeoutException):
        if scope.expired() or out_of_time(deadline):
            raise error(deadline, "during an upstream request") from None
        raise
    finally:
        DEADLINE.reset(token)
    if isinstance(response.stream, httpx.AsyncByteStream):
        response.stream = DeadlineStream(response.stream, deadline, error)
    return response


class DeadlineStream(httpx.AsyncByteStream):
    """An answer's body read within the caller's deadline."""

    def __init__(
        self, stream: httpx.AsyncByteStream, deadline: Deadline, error: DeadlineErrorFactory
    ) -> None:
        self._stream = stream
        self._deadline = deadline
        self._error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._stream.__aiter__()
        deadline = self._deadline
        while True:
            if out_of_time(deadline):
                raise self._error(deadline, "while reading an upstream answer")
            try:
                async with asyncio.timeout(deadline.remaining()) as scope:
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except (TimeoutError, httpx.TimeoutException):
                if scope.expired() or out_of_time(deadline):
                    raise self._error(deadline, "while reading an upstream answer") from None
                raise
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()
