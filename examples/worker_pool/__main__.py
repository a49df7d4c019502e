"""``python -m examples.worker_pool``: a worker killed mid-request is replaced.

Run from the repository root. Prints each step; exits 0 when the next checkout
after the kill succeeded on a fresh worker and every process was reaped.
"""

from __future__ import annotations

import asyncio
import os
import signal

from examples.worker_pool import Worker, WorkerDied, worker_pool


async def main() -> int:
    pool = worker_pool(min_size=2, max_size=2)
    async with pool:
        async with pool.get_connection() as worker:
            print(f"worker {worker.pid} answered {await worker.request('echo', value='hello')!r}")

        victim: Worker | None = None
        try:
            async with pool.get_connection() as worker:
                victim = worker
                asyncio.get_running_loop().call_later(0.2, os.kill, worker.pid, signal.SIGKILL)
                print(f"worker {worker.pid} sleeps 30 s; SIGKILL in 0.2 s ...")
                await worker.request("sleep", seconds=30)
        except WorkerDied as exc:
            print(f"the caller got {type(exc).__name__}: {exc}")
        assert victim is not None
        status = victim.process.returncode
        print(f"worker {victim.pid} was reaped by the pool (exit status {status})")

        # Both workers at once: the second is the one started to replace the dead one.
        async with pool.get_connection() as one, pool.get_connection() as two:
            pids = await asyncio.gather(one.request("pid"), two.request("pid"))
        replaced = victim.pid not in pids
        print(
            f"next two checkouts: workers {pids[0]} and {pids[1]} answered (replaced: {replaced})"
        )
        stats = pool.get_stats_snapshot()
        print(
            f"stats: {stats['connection_creations']} created, {stats['connection_closures']} "
            f"closed, closed by reason {stats['details']['closed']}"
        )
        workers = pool.resources()
    print(f"pool closed; workers left running: {sum(w.alive for w in workers)}")
    return 0 if replaced and not any(w.alive for w in workers) else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
