"""Find what a test left running: pools not closed, leases not returned, tasks not ended.

A :class:`LeakTracker` records, while it is active, every pool constructed (any
:class:`~resync.core.pools.base_pool.ConnectionPool`), every lease entered and
not yet exited, and -- on the event loop it is told to watch -- every task
created, each with the few stack frames outside resync, asyncio and pytest that
show *where* it was made. Afterwards :meth:`LeakTracker.leaks` lists what is
still open:

- a pool that was opened (``ready`` or ``closing``) and not closed;
- a lease whose ``async with`` block was never left;
- a task on the watched loop that is still pending after a grace period.

Recording works by wrapping ``ConnectionPool.__init__``, ``Lease.__aenter__``
and ``Lease.__aexit__`` while at least one tracker is active, and by a task
factory on the watched loop; trackers nest (the innermost records), so a test
that runs pytest inside pytest (``pytester``) is tracked on its own. No pytest
import here: :mod:`resync.testing.plugin` drives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import traceback
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

import resync
from resync.core.pools.base_pool import ConnectionPool
from resync.core.pools.kernel.lease import Lease
from resync.core.pools.kernel.state import PoolState

__all__ = ["Leak", "LeakTracker", "creation_site"]

_MAX_FRAMES = 3
_MAX_WALK = 60
# Frames skipped when showing where something was made: resync itself and the
# machinery user code runs through. A frame of the test runner ends the walk.
_TRANSPARENT = (
    os.path.dirname(resync.__file__) + os.sep,
    os.path.dirname(asyncio.__file__) + os.sep,
    contextlib.__file__,
    functools.__file__,
)
_BOUNDARY = tuple(f"{os.sep}{name}{os.sep}" for name in ("_pytest", "pluggy", "pytest_asyncio"))


def _caller_of_caller() -> FrameType | None:
    """The frame that called the function that calls this one (None if unknown)."""
    frame = inspect.currentframe()
    try:
        caller = frame.f_back if frame is not None else None
        return caller.f_back if caller is not None else None
    finally:
        del frame  # a frame referencing itself would wait for the garbage collector


def _is_internal(filename: str) -> bool:
    return (
        filename.startswith(_TRANSPARENT)
        or filename.startswith("<frozen ")
        or _is_boundary(filename)
    )


def _is_boundary(filename: str) -> bool:
    return any(part in filename for part in _BOUNDARY)


def creation_site(frame: FrameType | None) -> traceback.StackSummary:
    """The innermost few user frames from ``frame`` outwards, up to the test runner."""

    def user_frames() -> Iterator[tuple[FrameType, int]]:
        current, walked, kept = frame, 0, 0
        while current is not None and walked < _MAX_WALK and kept < _MAX_FRAMES:
            filename = current.f_code.co_filename
            if _is_boundary(filename):
                return
            if not _is_internal(filename):
                kept += 1
                yield current, current.f_lineno
            current, walked = current.f_back, walked + 1

    return traceback.StackSummary.extract(user_frames(), lookup_lines=False)


def _format_site(site: traceback.StackSummary, verb: str) -> str:
    if not site:
        return f"      {verb} from a callback (no user frame on the stack)"
    lines = [f"      {verb} at:"]
    for summary in reversed(site):  # outermost first, like a traceback
        where = _relative(summary.filename)
        code = (summary.line or "").strip()
        lines.append(
            f"        {where}:{summary.lineno} in {summary.name}" + (f": {code}" if code else "")
        )
    return "\n".join(lines)


def _relative(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


@dataclass(frozen=True)
class Leak:
    """One thing a test left open: ``kind`` is "task", "lease" or "pool"."""

    kind: str
    what: str
    site: str

    def __str__(self) -> str:
        return f"  - {self.what}\n{self.site}"


class LeakTracker:
    """Records pools, leases and (on one loop) tasks created while it is active.

    Use ``start()``/``stop()`` (or ``with``); call :meth:`watch_loop` from a
    coroutine on the loop whose tasks should be tracked.
    """

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.pools: list[tuple[ConnectionPool[Any], traceback.StackSummary]] = []
        self.leases: dict[int, tuple[Lease[Any], traceback.StackSummary, str]] = {}
        self.task_sites: weakref.WeakKeyDictionary[asyncio.Future[Any], traceback.StackSummary] = (
            weakref.WeakKeyDictionary()
        )
        self.tasks_before: set[asyncio.Task[Any]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._factory: Callable[..., asyncio.Future[Any]] | None = None
        self._previous_factory: Any = None

    def __repr__(self) -> str:
        return f"<LeakTracker {self.label!r} pools={len(self.pools)} leases={len(self.leases)}>"

    # --- activation -----------------------------------------------------------

    def start(self) -> LeakTracker:
        """Become the innermost active tracker."""
        if not _active:
            _install()
        _active.append(self)
        return self

    def stop(self) -> None:
        """Stop recording (and stop watching the loop); idempotent."""
        self.unwatch_loop()
        if self in _active:
            _active.remove(self)
            if not _active:
                _uninstall()

    def __enter__(self) -> LeakTracker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def watch_loop(self) -> None:
        """Track tasks created from now on on the running loop (call from a coroutine)."""
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.tasks_before = set(asyncio.all_tasks(loop))
        previous = self._previous_factory = loop.get_task_factory()
        sites = self.task_sites

        def factory(
            loop: asyncio.AbstractEventLoop, coro: Any, /, **kwargs: Any
        ) -> asyncio.Future[Any]:
            if previous is not None:
                task: asyncio.Future[Any] = previous(loop, coro, **kwargs)
            else:
                task = asyncio.Task(coro, loop=loop, **kwargs)
            sites[task] = creation_site(_caller_of_caller())
            return task

        self._factory = factory
        loop.set_task_factory(factory)

    def unwatch_loop(self) -> None:
        loop, self.loop = self.loop, None
        if loop is not None and not loop.is_closed() and loop.get_task_factory() is self._factory:
            loop.set_task_factory(self._previous_factory)
        self._factory = self._previous_factory = None

    # --- results ------------------------------------------------------------------

    def pending_tasks(self) -> set[asyncio.Task[Any]]:
        """Tasks created on the watched loop since :meth:`watch_loop` and not done."""
        if self.loop is None:
            return set()
        current = asyncio.current_task()
        return {
            task
            for task in asyncio.all_tasks(self.loop)
            if task not in self.tasks_before and task is not current and not task.done()
        }

    async def settle(self, grace: float) -> None:
        """Give tasks created during the test up to ``grace`` seconds to finish."""
        pending = self.pending_tasks()
        if pending and grace > 0:
            await asyncio.wait(pending, timeout=grace)

    def open_pools(self) -> list[tuple[ConnectionPool[Any], traceback.StackSummary]]:
        return [
            (pool, site)
            for pool, site in self.pools
            if pool.state in (PoolState.READY, PoolState.CLOSING)
        ]

    def leaks(self, kinds: frozenset[str] = frozenset({"task", "lease", "pool"})) -> list[Leak]:
        """What is still open now, tasks first, then leases, then pools."""
        found: list[Leak] = []
        if "task" in kinds:
            for task in sorted(self.pending_tasks(), key=lambda t: t.get_name()):
                site = self.task_sites.get(task, traceback.StackSummary())
                found.append(Leak("task", _describe_task(task), _format_site(site, "created")))
        if "lease" in kinds:
            for lease, site, holder in self.leases.values():
                pool = lease.pool
                what = (
                    f"open lease on pool '{pool.name}' ({type(pool).__name__}, "
                    f"{pool.state.value}) held by task {holder!r}"
                )
                found.append(Leak("lease", what, _format_site(site, "acquired")))
        if "pool" in kinds:
            for pool, site in self.open_pools():
                what = f"unclosed pool '{pool.name}' ({type(pool).__name__}, {pool.state.value})"
                found.append(Leak("pool", what, _format_site(site, "created")))
        return found

    async def clean_up(self, timeout: float = 2.0) -> None:
        """Cancel leaked tasks, then close leaked pools of this loop; never raises."""
        tasks = self.pending_tasks()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        loop = asyncio.get_running_loop()
        pools = [pool for pool, _ in self.open_pools() if pool.loop in (loop, None)]
        if pools:
            closes = [asyncio.ensure_future(pool.close(drain_timeout=0)) for pool in pools]
            await asyncio.wait(closes, timeout=timeout)


def _describe_task(task: asyncio.Task[Any]) -> str:
    coro: Any = task.get_coro()
    name = getattr(coro, "__qualname__", type(coro).__name__)
    where = ""
    frame = getattr(coro, "cr_frame", None)
    while frame is not None:  # the innermost user coroutine it is suspended in
        if not _is_internal(frame.f_code.co_filename):
            where = f", waiting at {_relative(frame.f_code.co_filename)}:{frame.f_lineno}"
        coro = getattr(coro, "cr_await", None)
        frame = getattr(coro, "cr_frame", None)
    return f"task {task.get_name()!r} running {name}(){where}"


# --- the wrappers (installed while a tracker is active) ------------------------------

_active: list[LeakTracker] = []
_originals: dict[str, Any] = {}


def _install() -> None:
    init = _originals["init"] = ConnectionPool.__init__
    enter = _originals["enter"] = Lease.__aenter__
    leave = _originals["exit"] = Lease.__aexit__

    @functools.wraps(init)
    def __init__(self: ConnectionPool[Any], *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if _active:
            _active[-1].pools.append((self, creation_site(_caller_of_caller())))

    @functools.wraps(enter)
    async def __aenter__(self: Lease[Any]) -> Any:
        site = creation_site(_caller_of_caller())
        connection = await enter(self)
        if _active:
            task = asyncio.current_task()
            holder = task.get_name() if task is not None else "<no task>"
            _active[-1].leases[id(self)] = (self, site, holder)
        return connection

    @functools.wraps(leave)
    async def __aexit__(
        self: Lease[Any],
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await leave(self, exc_type, exc, tb)
        finally:
            for tracker in _active:
                tracker.leases.pop(id(self), None)

    ConnectionPool.__init__ = __init__  # type: ignore[method-assign]
    Lease.__aenter__ = __aenter__  # type: ignore[method-assign]
    Lease.__aexit__ = __aexit__  # type: ignore[method-assign]


def _uninstall() -> None:
    if _originals:
        ConnectionPool.__init__ = _originals.pop("init")  # type: ignore[method-assign]
        Lease.__aenter__ = _originals.pop("enter")  # type: ignore[method-assign]
        Lease.__aexit__ = _originals.pop("exit")  # type: ignore[method-assign]
