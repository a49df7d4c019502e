"""A pool of worker subprocesses: :class:`~resync.core.pools.resource.pool.ResourcePool` wiring."""

from __future__ import annotations

from typing import Any

from examples.worker_pool.client import Worker
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.resource.pool import ResourcePool

__all__ = ["worker_pool"]


def worker_pool(
    name: str = "workers",
    *,
    min_size: int = 2,
    max_size: int = 4,
    connection_timeout: float = 5.0,
    idle_timeout: float = 60.0,
    max_lifetime: float = 600.0,
    health_check_interval: float = 10.0,
    **options: Any,
) -> ResourcePool[Worker]:
    """A (not yet opened) pool of ``worker.py`` processes.

    - ``create`` starts a process and waits for its "ready" line;
    - ``validate`` (each checkout) pings it: a worker that died while idle is
      closed and another one used;
    - ``reset`` refuses a worker returned mid-request (timeout or error in the
      caller), and a :class:`~examples.worker_pool.client.WorkerDied` raised in
      a lease is a ``ResourceBroken``: either way the process is killed,
      reaped and replaced up to ``min_size``;
    - a caller cancelled mid-request has its worker killed (its state is unknown);
    - ``close`` asks each worker to exit, kills it after a grace period, and reaps it.

    ``options`` go to :class:`ResourcePool` (``overflow``, ``order`` ...).
    """
    config = ConnectionPoolConfig(
        pool_name=name,
        min_size=min_size,
        max_size=max_size,
        connection_timeout=connection_timeout,
        idle_timeout=idle_timeout,
        max_lifetime=max_lifetime,
        health_check_interval=health_check_interval,
        drain_timeout=5.0,
    )
    options.setdefault("backend", "worker")
    return ResourcePool(
        config,
        Worker.start,
        Worker.close,
        validate=Worker.check,
        reset=Worker.reset,
        **options,
    )
