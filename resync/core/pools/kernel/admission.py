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
  once with ``release``, so it is neither lost nor freed twice;
- dropped by queue management (below): removed from the queue, no slot taken.

No lock is needed: asyncio runs one callback at a time and nothing here awaits
between reading and writing the counts. asyncio objects (futures, timers) are
created only when a caller must wait, on the loop it waits on.

Overload control (all of it on the waiting path: ``try_acquire`` and a
``release`` with nobody queued cost exactly what they cost without it):

**Priorities.** A caller is ``critical``, ``default`` or ``sheddable``
(:class:`Priority`). They never reorder the queue -- admitted callers are
served strictly FIFO whatever their priority -- they only decide who is
refused first. With ``max_waiting = M > 0`` a newcomer that finds no free
slot is refused at once when ``waiting >= bound``, with the bound
``M // 2`` for sheddable, ``M`` for default and ``M + max(1, M // 4)`` for
critical (critical callers may queue past ``max_waiting`` by that reserve).

**Queue management** (CoDel as Elixir's DBConnection applies it to a pool;
on when ``queue_target > 0`` and ``queue_interval > 0``). Time is cut into
intervals of ``queue_interval``; each interval is judged at the first queue
event (a caller queuing, a slot handed over) after it ends:

- *entering*: if callers were queued during the interval and none of them
  was granted a slot within ``queue_target``, the gate is **dropping** and
  every waiter that has waited longer than its drop age fails at once
  (``DROPPED``: the pool's overloaded error);
- *while dropping*: a slot being handed over skips (and fails) each waiter
  older than its drop age and goes to the first that is not; a newcomer that
  finds no free slot is refused at once if it is sheddable, or if it is
  default and the queue ahead of it would take longer than
  1.5 x ``queue_target`` to drain at the rate slots were handed over in the
  last interval (it would most likely be dropped at 2 x target anyway, and
  learns it now instead); critical newcomers queue;
- *leaving*: the first interval in which at least half of the callers
  granted from the queue got their slot within ``queue_target`` (the median
  wait is back under the target), or nobody queued at all, ends the dropping
  state. (DBConnection leaves on the first such grant; resync refuses most
  newcomers at once while dropping, so the queue is short and a few callers
  are served fast right after a burst of drops even though the overload
  goes on -- leaving then would let the queue grow unmanaged for a whole
  interval again.)

Drop ages: sheddable ``queue_target``, default ``2 x queue_target``,
critical never (only ``connection_timeout`` bounds a critical wait). Time is
the event loop's clock (``loop.time()``), so a virtual clock drives it in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from resync.core.exceptions import InvalidPriorityError

__all__ = [
    "CLOSED",
    "DROPPED",
    "GRANTED",
    "TIMED_OUT",
    "Admission",
    "AdmissionGate",
    "Priority",
    "PriorityName",
    "parse_priority",
    "priority_bound",
]


class Admission(enum.Enum):
    """How :meth:`AdmissionGate.wait` ended."""

    #: The caller owns one slot now and must ``release`` it.
    GRANTED = "granted"
    #: The timeout passed first; the caller owns nothing.
    TIMED_OUT = "timed_out"
    #: The gate was closed (the pool is shutting down); the caller owns nothing.
    CLOSED = "closed"
    #: Queue management failed the waiter (it waited past its drop age while
    #: the queue was dropping); the caller owns nothing.
    DROPPED = "dropped"


class Priority(enum.StrEnum):
    """How important a lease is when the pool is overloaded.

    ``critical`` callers are refused last (they may queue past ``max_waiting``
    by a reserve and queue management never drops them), ``sheddable``
    callers first. Priorities never reorder the queue.
    """

    CRITICAL = "critical"
    DEFAULT = "default"
    SHEDDABLE = "sheddable"


#: The names :class:`Priority` accepts, for type checkers.
PriorityName = Literal["critical", "default", "sheddable"]

# Module-level names for the hot path: a global lookup, compared with ``is``.
GRANTED = Admission.GRANTED
TIMED_OUT = Admission.TIMED_OUT
CLOSED = Admission.CLOSED
DROPPED = Admission.DROPPED
CRITICAL = Priority.CRITICAL
DEFAULT = Priority.DEFAULT
SHEDDABLE = Priority.SHEDDABLE

#: While dropping, a default newcomer queues only if the queue ahead would
#: drain within this many ``queue_target`` (below the 2 x target drop age,
#: leaving room for the jitter of service times).
ADMIT_FACTOR = 1.5


def parse_priority(value: object, pool_name: str) -> Priority:
    """``value`` (a :class:`Priority` or its name) as a :class:`Priority`;
    :class:`~resync.core.exceptions.InvalidPriorityError` naming the pool otherwise."""
    if isinstance(value, str):  # a Priority is a str too
        try:
            return Priority(value)
        except ValueError:
            pass
    raise InvalidPriorityError(
        f"Pool '{pool_name}': priority must be 'critical', 'default' or 'sheddable' "
        f"(resync.core.pools.Priority), got {value!r}",
        pool_name=pool_name,
    )


def priority_bound(max_waiting: int, priority: Priority) -> int:
    """How many waiters a newcomer of ``priority`` may find queued and still queue
    (``max_waiting`` 0: no bound, returns 0).

    ``max_waiting // 2`` for sheddable, ``max_waiting`` for default,
    ``max_waiting + max(1, max_waiting // 4)`` for critical.
    """
    if not max_waiting:
        return 0
    if priority is DEFAULT:
        return max_waiting
    if priority is SHEDDABLE:
        return max_waiting // 2
    return max_waiting + max(1, max_waiting // 4)


class _Waiter:
    """One queued caller: its future, when it queued and when it times out
    (loop time), its priority, and its own timer if it has one (see ``wait``)."""

    __slots__ = ("expires", "fut", "own", "priority", "since")

    def __init__(
        self, fut: asyncio.Future[Admission], since: float, priority: Priority, expires: float
    ) -> None:
        self.fut = fut
        self.since = since
        self.priority = priority
        self.expires = expires
        self.own: asyncio.TimerHandle | None = None


def _expire(waiters: deque[_Waiter], waiter: _Waiter) -> None:
    fut = waiter.fut
    if not fut.done():
        fut.set_result(TIMED_OUT)
        with contextlib.suppress(ValueError):  # release() may have popped it already
            waiters.remove(waiter)


class AdmissionGate:
    """Counts slots in use and queues waiters in arrival order.

    ``capacity`` is the pool's ``max_size`` (or the adaptive limit, which
    moves it with :meth:`resize`); ``max_waiting`` caps the queue (0 =
    unbounded; see :func:`priority_bound`). ``queue_target`` /
    ``queue_interval`` (seconds, 0 = off) turn queue management on (module
    docstring). ``on_empty`` is called whenever the last slot is freed
    (``close`` uses it to learn that draining is over).
    """

    __slots__ = (
        "_clock",
        "_closed",
        "_grants",
        "_rate",
        "_tail",
        "_timer",
        "_timer_loop",
        "_waiters",
        "_window_end",
        "_window_fast",
        "_window_queued",
        "_window_start",
        "capacity",
        "ceiling",
        "dropped",
        "dropping",
        "in_use",
        "limit_drops",
        "max_waiting",
        "on_empty",
        "queue_interval",
        "queue_target",
        "refused",
    )

    def __init__(
        self,
        capacity: int,
        max_waiting: int = 0,
        *,
        queue_target: float = 0.0,
        queue_interval: float = 0.0,
    ) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.in_use = 0
        self._waiters: deque[_Waiter] = deque()
        # One timer for the whole queue (see wait): the expiry it is set for,
        # and the latest expiry of a waiter that relies on it.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._tail = -math.inf
        self._closed = False
        self.on_empty: Callable[[], None] | None = None
        # Queue management: off unless both are > 0.
        managed = queue_target > 0 and queue_interval > 0
        self.queue_target = queue_target if managed else 0.0
        self.queue_interval = queue_interval if managed else 0.0
        #: True while queue management sheds load (module docstring).
        self.dropping = False
        #: Waiters failed by queue management after queuing (``DROPPED``).
        self.dropped = 0
        #: Newcomers refused at once, by priority (max_waiting bounds and
        #: queue management); counted by :meth:`refusal`.
        self.refused: dict[Priority, int] = dict.fromkeys(Priority, 0)
        #: With an adaptive limit: the capacity ``max_size`` allows (0 = no limit
        #: set); ``limit_drops`` counts callers queued because the limit was
        #: below it (the limit's "drops").
        self.ceiling = 0
        self.limit_drops = 0
        self._clock: Callable[[], float] | None = None
        self._window_start = 0.0
        self._window_end = -math.inf  # the first queue event opens the first interval
        self._window_fast = 0
        self._window_queued = False
        self._grants = 0
        self._rate = 0.0

    @property
    def waiting(self) -> int:
        """Callers queued now."""
        return len(self._waiters)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: every later wait returns ``CLOSED``."""
        return self._closed

    @property
    def managed(self) -> bool:
        """True when queue management is on (``queue_target`` and ``queue_interval`` > 0)."""
        return self.queue_interval > 0

    def is_full(self) -> bool:
        """True when ``max_waiting`` callers are already queued."""
        return 0 < self.max_waiting <= len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot now if one is free and nobody is queued ahead."""
        if self.in_use < self.capacity and not self._waiters and not self._closed:
            self.in_use += 1
            return True
        return False

    def refusal(self, priority: Priority = DEFAULT) -> str | None:
        """Why a newcomer of ``priority`` that found no free slot must be refused now.

        ``None``: it may queue (:meth:`wait`). Otherwise the reason, for the
        pool's overloaded error; the refusal is counted in :attr:`refused`.
        Called only after ``try_acquire`` failed, so it costs nothing on the
        fast path.
        """
        if self._closed:
            return None  # wait() answers CLOSED
        waiting = len(self._waiters)
        bound = priority_bound(self.max_waiting, priority)
        reason: str | None = None
        if self.max_waiting and waiting >= bound:
            rule = "" if priority is DEFAULT else f"; a {priority.value} lease queues below {bound}"
            reason = (
                f"{waiting} callers already waiting (max_waiting={self.max_waiting}{rule}); "
                "retry later or raise max_waiting/max_size"
            )
        elif self.queue_interval and priority is not CRITICAL:
            self._judge(self._now())  # may drop stale waiters: count after it
            waiting = len(self._waiters)
            if self.dropping and (
                priority is SHEDDABLE
                or self._drain_time(waiting) > ADMIT_FACTOR * self.queue_target
            ):
                reason = (
                    f"queue management is shedding load ({waiting} waiting; no queued caller "
                    f"got a connection within queue_target={self.queue_target:g}s for a whole "
                    f"queue_interval={self.queue_interval:g}s); retry later, or raise max_size "
                    "or queue_target"
                )
        if reason is not None:
            self.refused[priority] += 1
        return reason

    async def wait(self, timeout: float, priority: Priority = DEFAULT) -> Admission:
        """Queue for a slot; return ``GRANTED``, ``TIMED_OUT``, ``CLOSED`` or ``DROPPED``.

        On ``GRANTED`` the caller owns one slot and must ``release`` it; on
        any other outcome it owns nothing. On cancellation ``CancelledError``
        propagates and the caller owns nothing.
        """
        if self._closed:
            return CLOSED
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Admission] = loop.create_future()
        waiters = self._waiters
        now = loop.time()
        if self.in_use < self.ceiling:
            self.limit_drops += 1
        if self.queue_interval:
            self._clock = loop.time
            self._judge(now)
            self._window_queued = True
        # Timeouts: waiters queued with the same timeout also expire in queue
        # order, so one timer serves them all -- set for the oldest one's expiry,
        # it expires every waiter due and re-arms for the next (_on_timer). A
        # grant costs no timer cancellation, a wait no timer of its own. Only a
        # waiter due before one queued ahead of it (a shorter timeout: a caller's
        # deadline) gets its own timer.
        expires = now + timeout
        waiter = _Waiter(fut, now, priority, expires)
        waiters.append(waiter)
        if expires < self._tail:
            waiter.own = loop.call_at(expires, _expire, waiters, waiter)
        else:
            self._tail = expires
            timer = self._timer
            if timer is None or timer.cancelled() or self._timer_loop is not loop:
                self._timer = loop.call_at(expires, self._on_timer)
                self._timer_loop = loop
        try:
            return await fut
        except BaseException:
            # Cancelled (or interrupted). If the grant already happened the
            # slot is ours: pass it on so it is neither lost nor freed twice.
            if fut.done() and not fut.cancelled() and fut.result() is GRANTED:
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
            raise
        finally:
            if waiter.own is not None:
                waiter.own.cancel()

    def _on_timer(self) -> None:
        """The queue's timer: time out every waiter due, then re-arm for the next."""
        self._timer = None
        waiters = self._waiters
        if not waiters:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        while waiters:  # the usual case: the due waiters are the oldest ones
            head = waiters[0]
            if head.fut.done():
                waiters.popleft()
            elif head.own is None and head.expires <= now:
                waiters.popleft()
                head.fut.set_result(TIMED_OUT)
            else:
                break
        due: list[_Waiter] = []
        upcoming = math.inf
        for waiter in waiters:  # behind a waiter with its own timer (rare): look further
            if waiter.own is not None or waiter.fut.done():
                continue
            if waiter.expires <= now:
                due.append(waiter)
            else:
                upcoming = waiter.expires  # the chain is in expiry order
                break
        for waiter in due:
            waiters.remove(waiter)
            waiter.fut.set_result(TIMED_OUT)
        if upcoming != math.inf and not self._closed:
            self._timer = loop.call_at(upcoming, self._on_timer)

    def release(self) -> None:
        """Give one slot back: to the oldest live waiter, else to the free pool."""
        waiters = self._waiters
        # After a shrink, slots above the new capacity are retired, not passed on.
        if waiters and self.in_use <= self.capacity:
            if self.queue_interval:
                if self._hand_off_managed():
                    return
            else:
                while waiters:
                    fut = waiters.popleft().fut
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
        managed = self.queue_interval > 0
        while waiters and self.in_use < self.capacity:
            waiter = waiters.popleft()
            if not waiter.fut.done():
                self.in_use += 1
                if managed:
                    self._granted(self._now() - waiter.since)
                waiter.fut.set_result(GRANTED)

    def close(self) -> int:
        """Refuse all future waits and wake every queued waiter with ``CLOSED``.

        Returns how many waiters were woken. Slots already held stay held
        until released.
        """
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        woken = 0
        while self._waiters:
            fut = self._waiters.popleft().fut
            if not fut.done():
                fut.set_result(CLOSED)
                woken += 1
        return woken

    def snapshot(self) -> dict[str, Any]:
        """Queue management and priority figures, for the pool's stats.

        ``dropping`` is the state as last judged (at the latest queue event):
        a pool that went quiet while dropping shows it until its next queue
        event, which leaves the state. Reading changes nothing.
        """
        return {
            "queue_target": self.queue_target,
            "queue_interval": self.queue_interval,
            "dropping": self.dropping,
            "queue_drops": self.dropped,
            "refused": {p.value: n for p, n in self.refused.items()},
        }

    # --- queue management (waiting path only) ---------------------------------------

    def _now(self) -> float:
        clock = self._clock
        if clock is None:
            clock = self._clock = asyncio.get_running_loop().time
        return clock()

    def _drop_age(self, priority: Priority) -> float:
        if priority is DEFAULT:
            return 2 * self.queue_target
        if priority is SHEDDABLE:
            return self.queue_target
        return math.inf

    def _drain_time(self, waiting: int) -> float:
        """Seconds the ``waiting`` callers ahead would take at the last interval's rate."""
        if not waiting:
            return 0.0
        rate = self._rate
        return waiting / rate if rate > 0 else math.inf

    def _granted(self, waited: float) -> None:
        self._grants += 1
        if waited <= self.queue_target:
            self._window_fast += 1

    def _judge(self, now: float) -> None:
        """Close the interval if it is over: enter or leave the dropping state."""
        if now < self._window_end:
            return
        if self._window_end != -math.inf:
            busy = self._window_queued or bool(self._waiters)
            fast = self._window_fast
            if not busy:
                self.dropping = False
            elif self.dropping:
                # Leave once most grants are within the target again: a few
                # fast grants right after a burst of drops are not a recovery.
                self.dropping = 2 * fast < self._grants or not self._grants
            else:
                self.dropping = not fast
            elapsed = now - self._window_start
            self._rate = self._grants / elapsed if elapsed > 0 else 0.0
            if self.dropping:
                self._drop_stale(now)
        self._window_start = now
        self._window_end = now + self.queue_interval
        self._window_fast = 0
        self._window_queued = bool(self._waiters)
        self._grants = 0

    def _drop_stale(self, now: float) -> None:
        """Fail every waiter older than its drop age (one pass, order kept)."""
        kept: deque[_Waiter] = deque()
        for waiter in self._waiters:
            fut = waiter.fut
            if fut.done():
                continue
            if now - waiter.since > self._drop_age(waiter.priority):
                self.dropped += 1
                fut.set_result(DROPPED)
            else:
                kept.append(waiter)
        self._waiters.clear()
        self._waiters.extend(kept)

    def _hand_off_managed(self) -> bool:
        """Hand the slot to the oldest waiter still worth serving; fail stale ones."""
        now = self._now()
        self._judge(now)
        waiters = self._waiters
        dropping = self.dropping
        while waiters:
            waiter = waiters.popleft()
            fut = waiter.fut
            if fut.done():
                continue
            waited = now - waiter.since
            if dropping and waited > self._drop_age(waiter.priority):
                self.dropped += 1
                fut.set_result(DROPPED)
                continue
            self._granted(waited)
            fut.set_result(GRANTED)
            return True
        return False
