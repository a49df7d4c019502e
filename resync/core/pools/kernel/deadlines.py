"""The caller's deadline on the lease path (:mod:`resync.core.deadlines`).

:class:`~resync.core.pools.kernel.lease.Lease` reads the deadline in force
once per lease (one contextvar read; nothing else happens without one). With
a deadline set:

- the acquire timeout is ``min(connection_timeout, time left)``; a lease
  attempted after the deadline passed fails at once, and a wait or connect
  that ran out because the deadline did fails with the family's
  ``DeadlineExceededError``, not its timeout error (no ``pool_exhaustions``,
  no circuit-breaker outcome: the caller ran out of time, the backend did
  nothing wrong);
- once the lease holds a connection it is bound with a :class:`LeaseDeadline`:
  the backend's ``_bind_deadline(connection, deadline)`` bounds the calls
  made on the connection (Redis: each command's socket timeouts) and may
  return an *abort*: a no-await callable the lease calls at the deadline to
  cut the connection off (the database pool: statements cannot be bounded
  per call through SQLAlchemy, see :mod:`resync.core.pools.database.deadline`);
- when the lease ends, :meth:`LeaseDeadline.settle` decides whether the
  deadline ended it: the abort fired, or the deadline has passed and the
  body's error is a timeout or a backend failure (a socket timeout cut to
  the time left). The release is then told the deadline error -- a
  ``TimeoutError``, so every backend discards the connection (its state is
  unknown) and a database lease rolls back instead of committing -- the
  breaker records no outcome, ``deadline_exceeded`` counts it, and the caller
  gets the deadline error (chained to the body's error) unless the body
  raised an error of its own that the pool does not map (that one
  propagates unchanged).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from time import monotonic

from resync.core.deadlines import Deadline
from resync.core.exceptions import DeadlineExceededError

__all__ = ["SLACK", "LeaseDeadline", "Settled", "out_of_time"]

logger = logging.getLogger("resync.pool")

#: A timeout that fired this close to the deadline (seconds) was the deadline's.
SLACK = 0.002


def out_of_time(deadline: Deadline) -> bool:
    """Has ``deadline`` passed (give or take :data:`SLACK`)?"""
    return deadline.expires_at - monotonic() <= SLACK


class Settled(enum.Enum):
    """What the deadline meant for a lease that ended (:meth:`LeaseDeadline.settle`)."""

    #: The deadline did not end the lease: release and errors as without one.
    UNRELATED = "unrelated"
    #: The deadline ended it: release with the deadline error, raise it.
    ENDED = "ended"
    #: The connection was cut off at the deadline, but the body raised an
    #: error of its own: release with the deadline error, raise the body's.
    CUT_OFF = "cut_off"


class LeaseDeadline:
    """The deadline of one held lease, and the timer of its abort (if any).

    ``abort`` runs once, at the deadline, on the loop (no ``await``); an
    exception it raises is logged at DEBUG and swallowed. The timer runs
    until :meth:`stop` (the lease calls it once its release is over, so a
    ``COMMIT`` or ``ROLLBACK`` the release sends is bounded too); a lease that
    ended before the deadline leaves nothing scheduled behind.
    """

    __slots__ = ("_timer", "deadline", "fired")

    def __init__(
        self,
        deadline: Deadline,
        abort: Callable[[], object] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.deadline = deadline
        #: True once the abort ran (the connection was cut off).
        self.fired = False
        self._timer: asyncio.TimerHandle | None = None
        if abort is not None:
            self._timer = loop.call_later(max(deadline.remaining(), 0.0), self._fire, abort)

    def _fire(self, abort: Callable[[], object]) -> None:
        self.fired = True
        self._timer = None
        try:
            abort()
        except Exception as exc:  # the connection is discarded at release all the same
            logger.debug("deadline abort failed: %s", type(exc).__name__)

    def settle(
        self,
        exc: BaseException | None,
        is_backend_failure: Callable[[BaseException], bool],
        map_error: Callable[[BaseException], BaseException],
    ) -> Settled:
        """Say whether the deadline ended the lease (see the module docstring).

        A cancellation is never the deadline's to replace; an error that
        already is a deadline error is ``ENDED`` as it is. The timer keeps
        running (see :meth:`stop`).
        """
        if exc is not None and not isinstance(exc, Exception):
            return Settled.UNRELATED
        if isinstance(exc, DeadlineExceededError):
            return Settled.ENDED  # already the deadline's (a Redis command refused at once)
        if self.fired:
            if (
                exc is None
                or isinstance(exc, TimeoutError)
                or is_backend_failure(exc)
                or map_error(exc) is not exc
            ):
                return Settled.ENDED  # the driver's error from the cut, or a late clean exit
            return Settled.CUT_OFF
        if exc is None or not out_of_time(self.deadline):
            return Settled.UNRELATED
        if (
            isinstance(exc, TimeoutError)
            or is_backend_failure(exc)
            or isinstance(map_error(exc), TimeoutError)
        ):
            return Settled.ENDED
        return Settled.UNRELATED

    def stop(self) -> None:
        """Cancel the abort's timer (a no-op once it fired or was stopped)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
