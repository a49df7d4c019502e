"""Strict-FIFO admission with direct hand-off: the only place slots change hands.

A slot is the right to hold one lease. ``try_acquire`` takes a free slot only
when nobody is queued, so a newcomer can never overtake a waiter. ``release``
hands the slot straight to the oldest live waiter (the in-use count does not
move), and only frees it when nobody waits. Every state change is synchronous;
the one ``await`` is on the waiter's own future, and whatever interrupts it
(timeout, close, cancellation) leaves the counts exact:

- timed out or closed: the waiter is removed from the queue, no slot was taken;
- cancelled while queued: removed from the queue, no slot was taken;
- cancelled after the grant but before it could run: the slot is passed on at
  once with ``release``, so it is neither lost nor freed twice.

No lock is needed: asyncio runs one callback at a time and nothing here awaits
between reading and writing the counts. asyncio objects (futures, timers) are
created only when a caller must wait, on the loop it waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import deque
from collections.abc import Callable

__all__ = ["CLOSED", "GRANTED", "TIMED_OUT", "Admission", "AdmissionGate"]


class Admission(enum.Enum):
    """How :meth:`AdmissionGate.wait` ended."""

    #: The caller owns one slot now and must ``release`` it.
    GRANTED = "granted"
    #: The timeout passed first; the caller owns nothing.
    TIMED_OUT = "timed_out"
    #: The gate was closed (the pool is shutting down); the caller owns nothing.
    CLOSED = "closed"


# Module-level names for the hot path: a global lookup, compared with ``is``.
GRANTED = Admission.GRANTED
TIMED_OUT = Admission.TIMED_OUT
CLOSED = Admission.CLOSED


def _expire(waiters: deque[asyncio.Future[Admission]], fut: asyncio.Future[Admission]) -> None:
    if not fut.done():
        fut.set_result(TIMED_OUT)
        with contextlib.suppress(ValueError):  # release() may have popped it already
            waiters.remove(fut)


class AdmissionGate:
    """Counts slots in use and queues waiters in arrival order.

    ``capacity`` is the pool's ``max_size``; ``max_waiting`` caps the queue
    (0 = unbounded). ``on_empty`` is called whenever the last slot is freed
    (``close`` uses it to learn that draining is over).
    """

    __slots__ = ("_closed", "_waiters", "capacity", "in_use", "max_waiting", "on_empty")

    def __init__(self, capacity: int, max_waiting: int = 0) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.in_use = 0
        self._waiters: deque[asyncio.Future[Admission]] = deque()
        self._closed = False
        self.on_empty: Callable[[], None] | None = None

    @property
    def waiting(self) -> int:
        """Callers queued now."""
        return len(self._waiters)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: every later wait returns ``CLOSED``."""
        return self._closed

    def is_full(self) -> bool:
        """True when ``max_waiting`` callers are already queued."""
        return 0 < self.max_waiting <= len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot now if one is free and nobody is queued ahead."""
        if self.in_use < self.capacity and not self._waiters and not self._closed:
            self.in_use += 1
            return True
        return False

    async def wait(self, timeout: float) -> Admission:
        """Queue for a slot; return ``GRANTED``, ``TIMED_OUT`` or ``CLOSED``.

        On ``GRANTED`` the caller owns one slot and must ``release`` it. On
        cancellation ``CancelledError`` propagates and the caller owns nothing.
        """
        if self._closed:
            return CLOSED
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Admission] = loop.create_future()
        waiters = self._waiters
        waiters.append(fut)
        timer = loop.call_later(timeout, _expire, waiters, fut)
        try:
            return await fut
        except BaseException:
            # Cancelled (or interrupted). If the grant already happened the
            # slot is ours: pass it on so it is neither lost nor freed twice.
            if fut.done() and not fut.cancelled() and fut.result() is GRANTED:
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)
            raise
        finally:
            timer.cancel()

    def release(self) -> None:
        """Give one slot back: to the oldest live waiter, else to the free pool."""
        waiters = self._waiters
        # After a shrink, slots above the new capacity are retired, not passed on.
        if self.in_use <= self.capacity:
            while waiters:
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result(GRANTED)
                    return
        self.in_use -= 1
        if self.in_use == 0 and self.on_empty is not None:
            self.on_empty()

    def resize(self, capacity: int) -> None:
        """Change the slot count; newly free slots go to waiters at once."""
        self.capacity = capacity
        waiters = self._waiters
        while waiters and self.in_use < self.capacity:
            fut = waiters.popleft()
            if not fut.done():
                self.in_use += 1
                fut.set_result(GRANTED)

    def close(self) -> int:
        """Refuse all future waits and wake every queued waiter with ``CLOSED``.

        Returns how many waiters were woken. Slots already held stay held
        until released.
        """
        self._closed = True
        woken = 0
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(CLOSED)
                woken += 1
        return woken
