"""Leak detection: warn about a lease held longer than ``leak_detection_threshold``.

When a pool's ``leak_detection_threshold`` is above 0, every lease arms one
:class:`LeakWatch` when it is granted. It records the holder task's name and
the caller's stack -- the frames of the code that entered
``async with pool.get_connection()``, from the task's own coroutine down to
that line; resync's pool modules and asyncio's machinery are left out -- and
schedules one timer on the loop. If the lease is still held when the timer
fires, the pool logs a warning (``resync.pool`` logger) with the holder and
that stack and counts ``stats.leaks_detected`` (exported as
``resync_pool_leaks_total``). When the lease is finally returned it logs a
second warning saying how long it was held. A lease returned before the
threshold just cancels its timer.

Every leak is counted exactly once and always gets both warnings: if the loop
was too busy to run the timer before the lease came back, the first warning
is logged at return time.

With the threshold at 0 (the default) nothing here runs: the lease path pays
one attribute test when granted and one when returned.

Source lines of the stack are read only when a warning is logged, so arming a
watch costs a frame walk and a timer, not file I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import sys
import traceback
from time import perf_counter
from types import FrameType

from resync.core.pools.kernel.stats import ConnectionPoolStats

__all__ = ["LeakWatch", "caller_stack"]

logger = logging.getLogger("resync.pool")

#: Most caller frames kept for a warning.
MAX_FRAMES = 20

_POOLS_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_CONTEXTLIB = os.path.abspath(contextlib.__file__)
_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep
# asyncio helpers a coroutine chain may pass through (wait_for runs its
# awaitable inline since 3.12): skipped, the caller's frames go on below them.
_ASYNCIO_PASS_THROUGH = frozenset(_ASYNCIO_DIR + name for name in ("tasks.py", "timeouts.py"))
_uvloop = importlib.util.find_spec("uvloop")
_LOOP_DIRS = (_ASYNCIO_DIR,) + (
    (os.path.dirname(os.path.abspath(_uvloop.origin)) + os.sep,)
    if _uvloop is not None and _uvloop.origin
    else ()
)


def caller_stack(frame: FrameType | None) -> traceback.StackSummary:
    """The frames from ``frame`` outwards that belong to the caller, outermost first.

    The walk stops at the event loop (the frame that stepped the task): below
    it are frames of the loop and of whoever started it, which say nothing
    about this lease. Frames of resync's pool modules, of ``contextlib`` and
    of asyncio helpers on the coroutine chain are skipped. Source lines are
    not read here.
    """
    frames: list[tuple[FrameType, int]] = []
    while frame is not None and len(frames) < MAX_FRAMES:
        filename = frame.f_code.co_filename
        if filename.startswith(_LOOP_DIRS) and filename not in _ASYNCIO_PASS_THROUGH:
            break
        if not (
            filename.startswith(_POOLS_DIR)
            or filename == _CONTEXTLIB
            or filename in _ASYNCIO_PASS_THROUGH
        ):
            frames.append((frame, frame.f_lineno))
        frame = frame.f_back
    summary = traceback.StackSummary.extract(iter(frames), lookup_lines=False)
    summary.reverse()
    return summary


class LeakWatch:
    """The leak timer of one lease (see the module docstring).

    Built inside the lease's ``__aenter__``; a leak adds one to
    ``stats.leaks_detected``.
    """

    __slots__ = (
        "_handle",
        "_pool_name",
        "_since",
        "_stats",
        "holder",
        "reported",
        "stack",
        "threshold",
    )

    def __init__(self, pool_name: str, threshold: float, stats: ConnectionPoolStats) -> None:
        self._pool_name = pool_name
        self.threshold = threshold
        self._stats = stats
        task = asyncio.current_task()
        self.holder = task.get_name() if task is not None else "<no task>"
        # From the lease's __aenter__ out; caller_stack drops the pool's own frames.
        self.stack = caller_stack(sys._getframe(1))
        self.reported = False
        self._since = perf_counter()
        self._handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            threshold, self._fire
        )

    def _fire(self) -> None:
        self._handle = None
        self._report(perf_counter() - self._since)

    def _report(self, held: float) -> None:
        if self.reported:
            return
        self.reported = True
        self._stats.leaks_detected += 1
        logger.warning(
            "pool '%s': lease held by task %r for more than %.3gs (held %.3fs so far; "
            "possible leak). Acquired at (most recent call last):\n%s",
            self._pool_name,
            self.holder,
            self.threshold,
            held,
            "".join(self.stack.format()).rstrip("\n"),
        )

    def finish(self, held: float) -> None:
        """The lease came back after ``held`` seconds: stop the timer, log a late return."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
        if held < self.threshold and not self.reported:
            return
        self._report(held)  # already done unless the loop was too busy to run the timer
        logger.warning(
            "pool '%s': lease held by task %r returned after %.3fs (leak threshold %.3gs)",
            self._pool_name,
            self.holder,
            held,
            self.threshold,
        )
