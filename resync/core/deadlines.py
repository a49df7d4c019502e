"""Deadlines that travel: ``with resync.deadline(seconds):``.

A deadline is an absolute point on the ``time.monotonic()`` clock (the clock
asyncio's default loop runs on; under a virtual-time loop deadlines still run
on real time), held in a :class:`~contextvars.ContextVar`.
Inside the block every pool caps what it does by the time left:

- the acquire timeout of every lease (queue, connect, validation) is at most
  the time left; a lease attempted after the deadline passed fails at once
  with the pool family's :class:`~resync.core.exceptions.DeadlineExceededError`
  (a ``TimeoutError``), which names the pool and says the deadline ran out,
  not the pool;
- a database statement of a lease cannot outlive it (at the deadline the
  lease's connection is cut off and discarded, see
  :mod:`resync.core.pools.database.deadline`);
- the Redis commands of a leased client and the requests of the HTTP pool
  are bounded by the time left.

Rules of the contextvar:

- nested deadlines take the earlier: ``deadline(5)`` inside ``deadline(1)``
  keeps the 1 s one, ``deadline(0.1)`` inside it tightens it;
- tasks created inside the block (``asyncio.create_task``, ``gather``,
  ``TaskGroup``) inherit it, as they inherit every contextvar; leaving the
  block restores the deadline that was in force before it;
- the block itself is not interrupted when the time runs out: code that is
  not a pool call keeps running (wrap it in ``asyncio.timeout`` for that);
  only the pools' calls are bounded;
- a lease keeps the deadline in force when it was taken: a tighter deadline
  entered inside the body of a lease already held bounds the leases and HTTP
  requests made in it, but not that lease's statements or Redis commands
  (enter the deadline first, then take the lease).

``deadline()`` works as ``with`` (also around ``await``\\ s in a coroutine:
enter and leave it in the same task) and as ``async with``. It imports nothing
beyond the standard library, so the kernel and ``resync`` itself import it
cheaply. With no deadline set, a lease pays one contextvar read.
"""

from __future__ import annotations

import math
from contextvars import ContextVar, Token
from time import monotonic
from types import TracebackType

from resync.core.exceptions import ConfigurationError

__all__ = ["Deadline", "current_deadline", "deadline", "time_left"]


class Deadline:
    """One deadline in force: when it ends (``expires_at``, monotonic seconds),
    the budget it was given (``seconds``) and where it came from (``source``,
    for messages: ``"resync.deadline()"``, ``"the X-Request-Timeout header"``)."""

    __slots__ = ("expires_at", "seconds", "source")

    def __init__(self, expires_at: float, seconds: float, source: str) -> None:
        self.expires_at = expires_at
        self.seconds = seconds
        self.source = source

    def remaining(self) -> float:
        """Seconds left (negative once it has passed)."""
        return self.expires_at - monotonic()

    @property
    def expired(self) -> bool:
        """True once the deadline has passed."""
        return monotonic() >= self.expires_at

    def describe(self) -> str:
        """What the deadline was, for an error message: budget, source, how late."""
        late = -self.remaining()
        when = f"{late:.3f}s ago" if late >= 0 else f"{-late:.3f}s left"
        return f"{self.seconds:g}s set by {self.source}, ended {when}"

    def __repr__(self) -> str:
        return f"<Deadline {self.seconds:g}s from {self.source}, {self.remaining():.3f}s left>"


#: The deadline in force in this context (``None``: no deadline).
DEADLINE: ContextVar[Deadline | None] = ContextVar("resync_deadline", default=None)


def current_deadline() -> Deadline | None:
    """The deadline in force in this task, or ``None``."""
    return DEADLINE.get()


def time_left() -> float | None:
    """Seconds left before the deadline in force (may be negative), or ``None``."""
    current = DEADLINE.get()
    return None if current is None else current.remaining()


class deadline:  # named like a function: ``with resync.deadline(2):``
    """Set a deadline ``seconds`` from now for the block (see the module docstring).

    ``seconds``: a number >= 0 (``0``: already passed -- every lease in the
    block fails at once), or ``None`` / ``math.inf`` for no new deadline (the
    block keeps the one in force, if any). A negative, NaN or non-numeric
    value raises :class:`~resync.core.exceptions.ConfigurationError` (a
    ``ValueError``). ``source`` names the deadline in error messages. The
    clock starts when the block is entered; the ``Deadline`` in force is what
    ``with`` binds. A ``deadline`` object may be entered again after it was
    left (each entry starts the clock anew), but not while it is entered.
    """

    __slots__ = ("_token", "seconds", "source")

    def __init__(self, seconds: float | None, *, source: str = "resync.deadline()") -> None:
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise _bad_seconds(seconds)
            if math.isnan(seconds) or seconds < 0:
                raise _bad_seconds(seconds)
        self.seconds = seconds
        self.source = source
        self._token: Token[Deadline | None] | None = None

    def __enter__(self) -> Deadline | None:
        if self._token is not None:
            raise RuntimeError("this resync.deadline() is already entered; create a new one")
        outer = DEADLINE.get()
        seconds = self.seconds
        if seconds is None or seconds == math.inf:
            inner = outer
        else:
            expires_at = monotonic() + seconds
            if outer is not None and outer.expires_at <= expires_at:
                inner = outer  # nested deadlines take the earlier
            else:
                inner = Deadline(expires_at, float(seconds), self.source)
        self._token = DEADLINE.set(inner)
        return inner

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            DEADLINE.reset(token)

    async def __aenter__(self) -> Deadline | None:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def _bad_seconds(seconds: object) -> ConfigurationError:
    return ConfigurationError(
        f"resync.deadline() takes a number of seconds >= 0 (or None for no deadline), "
        f"got {type(seconds).__name__} {seconds!r}"
    )
