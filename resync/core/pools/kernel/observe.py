"""Lease observers: a process-wide hook told about every lease when it ends.

An observer (:class:`LeaseObserver`) is any object with a ``lease_ended``
method; :func:`add_observer` registers it for every pool of the process, and
:mod:`resync.instrumentation.otel` is the one shipped with resync (spans and
OpenTelemetry histograms). The kernel imports no tracing library: it only
calls whatever is registered here.

The cost when nothing is registered is one truthiness test of the
:data:`observers` tuple per lease. That is why the tuple is replaced, never
mutated, by :func:`add_observer` / :func:`remove_observer`: a lease reads the
module attribute once and iterates a tuple nobody else changes.

A lease is reported once, when it ends:

- a lease that got a connection, after its release (slot freed, stats booked),
  with the error that ended it -- the one raised in the ``async with`` body, or
  else the one its release raised -- or ``None``;
- a lease that never got one -- refused by the circuit breaker, shed by
  ``max_waiting``, timed out, cancelled while waiting, the pool closed or not
  usable, the backend failing to connect -- with ``held=0.0`` and the error the
  caller receives.

Times are :func:`time.perf_counter` seconds: ``started`` is when the caller
asked for the lease, ``waited`` how long it took to get it (or to fail),
``held`` how long it was held (until its release began).

Observers run synchronously on the event loop, in the task that used the
lease (so its context, e.g. the current span, is the caller's). They must be
quick and must not block. One that raises is logged and ignored; the lease's
own outcome never changes.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

__all__ = ["LeaseObserver", "add_observer", "notify", "observers", "remove_observer"]

logger = logging.getLogger("resync.pool")


class LeaseObserver(Protocol):
    """Told about each lease of every pool, once, when it ends."""

    def lease_ended(
        self,
        pool_name: str,
        backend: str,
        started: float,
        waited: float,
        held: float,
        error: BaseException | None,
    ) -> None: ...


#: The registered observers. Replaced (never mutated) by add/remove; empty = no cost.
observers: tuple[LeaseObserver, ...] = ()

_lock = threading.Lock()  # add/remove may come from any thread; leases only read


def add_observer(observer: LeaseObserver) -> None:
    """Register ``observer`` for every lease of every pool (once; adding it again is a no-op)."""
    global observers
    with _lock:
        if not any(o is observer for o in observers):
            observers = (*observers, observer)


def remove_observer(observer: LeaseObserver) -> None:
    """Unregister ``observer``; removing one that is not registered is a no-op."""
    global observers
    with _lock:
        observers = tuple(o for o in observers if o is not observer)


def notify(
    pool_name: str,
    backend: str,
    started: float,
    waited: float,
    held: float,
    error: BaseException | None,
) -> None:
    """Call every observer; one that raises is logged (with its traceback) and skipped."""
    for observer in observers:
        try:
            observer.lease_ended(pool_name, backend, started, waited, held, error)
        except Exception:
            logger.exception("pool '%s': lease observer %r failed", pool_name, observer)
