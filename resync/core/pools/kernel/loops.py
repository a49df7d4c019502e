"""Background loops: the one way a pool starts and stops a task it owns.

Every pool runs loops (maintenance, health checks, replica probes, Sentinel
watches, paced replacement). They all stop the same way, through
:func:`stop_task`:

- the task is cancelled and awaited until it has really ended, so a pool that
  says it is closed has no loop left touching its state;
- a loop that swallows a cancellation (redis-py's pub/sub read can) is
  cancelled again every ``recancel_every`` seconds until it ends;
- an exception the loop died of is logged at DEBUG, never raised into
  ``close()`` (the loop already logged anything a user must see);
- if the *caller* is cancelled while waiting, the cancellation propagates (the
  task has been cancelled and finishes on its own) -- ``close()`` never
  swallows the cancellation of the task that runs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["start_task", "stop_task"]

logger = logging.getLogger(__name__)


def start_task(coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
    """Start ``coro`` as a named task of the running loop (stop it with :func:`stop_task`)."""
    return asyncio.get_running_loop().create_task(coro, name=name)


async def stop_task(task: asyncio.Task[Any] | None, *, recancel_every: float | None = None) -> None:
    """Cancel ``task`` (``None`` or finished is fine) and wait until it has ended.

    With ``recancel_every`` the task is cancelled again at that period for as
    long as it keeps running (for loops whose driver absorbs a cancellation).
    Cancellation of the caller propagates at once; the task was already
    cancelled and ends without it being awaited.
    """
    if task is None:
        return
    if not task.done():
        task.cancel()
        while True:
            done, _ = await asyncio.wait([task], timeout=recancel_every)
            if done:
                break
            task.cancel()
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.debug("background task %s ended with %r", task.get_name(), exc)
