"""A pool of worker subprocesses that answer line-delimited JSON (see README.md)."""

from __future__ import annotations

from examples.worker_pool.client import WORKER_SCRIPT, Worker, WorkerDied, WorkerError
from examples.worker_pool.pool import worker_pool

__all__ = ["WORKER_SCRIPT", "Worker", "WorkerDied", "WorkerError", "worker_pool"]
