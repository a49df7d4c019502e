"""Read replicas of a database pool: where a read lease goes, and replica health.

A :class:`~resync.core.pools.database.pool.DatabaseConnectionPool` built with
``replica_urls`` (``DATABASE_REPLICA_URLS``) keeps one child pool per replica,
with the primary's sizes and timeouts (each replica has its own connection
budget), named ``<pool>-replica-<n>``. ``get_connection()`` always leases from
the primary: writes, and reads that must see the caller's own writes, go
there. ``get_read_session()`` returns a :class:`ReadLease`:

- it goes to a *healthy* replica, the least busy one (active plus queued
  leases over its ``max_size``); equally busy replicas take turns;
- with no healthy replica, it goes to the primary (counted in
  ``read_fallbacks``), so reads keep working through a replica outage;
- if the chosen replica cannot give a connection (refused, reset, closed, an
  error at checkout), it is taken out at once and the lease tries the next
  healthy replica, then the primary -- the caller does not see that error;
- if the replica does not answer within ``connection_timeout`` (hung server,
  lost network), the time is spent: the lease raises the timeout, and the
  replica is taken out so the following reads go elsewhere. A replica whose
  queue is full (``max_waiting``) raises the overloaded error, as any pool.

Replica health is watched by one background task: every
``replica_check_interval`` seconds (default: the pool's
``health_check_interval``, or 5 s when that is 0) each replica gets a real
round trip (``SELECT 1``, bounded by ``connection_timeout``); a replica that
fails it is taken out, one that passes is put back. A replica that is down
when the pool starts does not stop the pool from starting: it starts as
``down`` and is opened by a later check. States, errors (passwords hidden) and
how many reads each served are in the pool's stats ``details["replicas"]``,
and so in ``GET /pools``. Replicas are optional: their health never makes the
pool (or the service's readiness) unhealthy, since reads fall back.

A replica's own pool does not treat SQLSTATE 25006 as a failover: a write
sent over a read session is refused there by design, and the error reaches
the caller unchanged. Replication lag is not measured: a read session may
not see a write the caller just committed on the primary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from enum import StrEnum
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from resync.core.exceptions import PoolOverloadedError, PoolTimeoutError
from resync.core.pools.kernel.admission import AdmissionGate
from resync.core.pools.kernel.health import HealthResult
from resync.core.pools.kernel.lease import Lease
from resync.core.pools.kernel.loops import start_task, stop_task
from resync.core.pools.kernel.pacing import jittered
from resync.core.pools.kernel.state import PoolState
from resync.core.pools.kernel.stats import ConnectionPoolStats

__all__ = ["PrimaryPool", "ReadLease", "Replica", "ReplicaPool", "ReplicaSet", "ReplicaState"]

logger = logging.getLogger("resync.pool")


class PrimaryPool(Protocol):
    """What a :class:`ReadLease` uses of the primary pool."""

    def check_usable(self) -> None: ...
    def get_connection(self) -> Lease[AsyncSession]: ...


class ReplicaPool(PrimaryPool, Protocol):
    """What a :class:`ReplicaSet` uses of a replica's own pool."""

    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def state(self) -> PoolState: ...
    @property
    def gate(self) -> AdmissionGate: ...
    @property
    def stats(self) -> ConnectionPoolStats: ...
    @property
    def idle_count(self) -> int: ...
    def scrub(self, error: object) -> str: ...
    async def initialize(self) -> None: ...
    async def check_health(self) -> HealthResult: ...
    async def close(self, drain_timeout: float | None = None) -> None: ...
    async def drain(self, interval: float | None = None) -> int: ...


P = TypeVar("P", bound=ReplicaPool)


class ReplicaState(StrEnum):
    """Whether read leases are sent to a replica."""

    STARTING = "starting"  # not checked yet
    HEALTHY = "healthy"
    DOWN = "down"


class Replica(Generic[P]):
    """One replica: its pool, its state and what it served."""

    __slots__ = ("last_error", "pool", "reads", "state", "taken_out")

    def __init__(self, pool: P) -> None:
        self.pool = pool
        self.state = ReplicaState.STARTING
        self.last_error: str | None = None
        self.reads = 0
        self.taken_out = 0

    def load(self) -> float:
        """Active plus queued leases per slot: 0 idle, 1 full, above 1 queueing."""
        gate = self.pool.gate
        return (gate.in_use + gate.waiting) / max(gate.capacity, 1)

    def as_dict(self) -> dict[str, Any]:
        pool = self.pool
        return {
            "name": pool.name,
            "target": pool.url,
            "state": self.state.value,
            "last_error": self.last_error,
            "reads": self.reads,
            "taken_out": self.taken_out,
            "active_connections": pool.stats.active_connections,
            "idle_connections": pool.idle_count,
        }


class ReplicaSet(Generic[P]):
    """The replicas of the primary pool ``name``, their health task and the read routing."""

    def __init__(self, name: str, pools: Sequence[P], interval: float) -> None:
        self.name = name
        self.replicas = [Replica(pool) for pool in pools]
        self.interval = interval
        #: Read leases served by the primary because no replica was healthy.
        self.fallbacks = 0
        self._turn = 0
        self._watcher: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open every replica (concurrently; one that fails starts ``down``) and
        start the health task. Bounded by the replicas' ``connection_timeout``."""
        await self.check_all()
        self._watcher = start_task(self._watch(), name=f"resync-db-replicas-{self.name}")

    async def stop(self) -> None:
        """Stop the health task (cancel and wait) and close every replica pool
        (draining its leases within its own drain timeout). Cancelling the
        caller propagates; replicas not closed yet are left to their owner."""
        task, self._watcher = self._watcher, None
        await stop_task(task)
        await asyncio.gather(*(replica.pool.close() for replica in self.replicas))

    async def drain(self, interval: float | None) -> int:
        """``drain()`` every open replica pool; the number of connections marked."""
        ready = [r.pool for r in self.replicas if r.pool.state is PoolState.READY]
        return sum(await asyncio.gather(*(pool.drain(interval) for pool in ready)))

    # --- health ------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            # Jittered, so replicas of many processes are not probed in step.
            await asyncio.sleep(jittered(self.interval))
            try:
                await self.check_all()
            except Exception:  # one bad round must not end the watch
                logger.exception("pool '%s': replica health check crashed", self.name)

    async def check_all(self) -> None:
        """Check every replica now (concurrently); take out or put back each."""
        await asyncio.gather(*(self._check(replica) for replica in self.replicas))

    async def _check(self, replica: Replica[P]) -> None:
        pool = replica.pool
        if pool.state is PoolState.NEW:  # never opened, or its open failed: try again
            try:
                await pool.initialize()
            except Exception as exc:
                self.take_out(replica, f"{type(exc).__name__}: {pool.scrub(exc)}")
                return
        result = await pool.check_health()
        if result.healthy:
            self.put_back(replica)
        else:
            self.take_out(replica, result.error or "health check failed")

    def take_out(self, replica: Replica[P], reason: str) -> None:
        """Send no more reads to ``replica`` until a health check passes."""
        replica.last_error = reason
        if replica.state is ReplicaState.DOWN:
            return
        replica.state = ReplicaState.DOWN
        replica.taken_out += 1
        logger.warning(
            "pool '%s': replica '%s' taken out of the read rotation: %s",
            self.name,
            replica.pool.name,
            reason,
        )

    def put_back(self, replica: Replica[P]) -> None:
        """Send reads to ``replica`` again."""
        if replica.state is ReplicaState.HEALTHY:
            return
        was = replica.state
        replica.state = ReplicaState.HEALTHY
        replica.last_error = None
        log = logger.info if was is ReplicaState.STARTING else logger.warning
        log("pool '%s': replica '%s' is healthy", self.name, replica.pool.name)

    # --- routing ---------------------------------------------------------------------------

    def choose(self, exclude: Sequence[Replica[P]] = ()) -> Replica[P] | None:
        """The least busy healthy replica not in ``exclude``; ties take turns."""
        replicas = self.replicas
        count = len(replicas)
        self._turn = start = (self._turn + 1) % count
        best: Replica[P] | None = None
        best_load = 0.0
        for i in range(count):
            replica = replicas[(start + i) % count]
            if replica.state is not ReplicaState.HEALTHY or replica in exclude:
                continue
            load = replica.load()
            if best is None or load < best_load:
                best, best_load = replica, load
        return best

    def details(self) -> dict[str, Any]:
        return {
            "replicas": [replica.as_dict() for replica in self.replicas],
            "read_fallbacks": self.fallbacks,
        }


class ReadLease:
    """``async with pool.get_read_session() as session``: a read on a replica.

    Entering picks a replica as the module docstring says and leases from its
    pool (or from the primary); the same rules as ``get_connection()`` then
    hold -- commit on a clean exit, roll back on an exception, the slot freed
    whatever happens, cancellation included. Single use.
    """

    __slots__ = ("_lease", "_primary", "_replicas", "_used")

    def __init__(self, primary: PrimaryPool, replicas: ReplicaSet[Any] | None) -> None:
        self._primary = primary
        self._replicas = replicas
        self._lease: Lease[AsyncSession] | None = None
        self._used = False

    async def __aenter__(self) -> AsyncSession:
        if self._used:
            raise RuntimeError("a read lease can be entered only once; call get_read_session()")
        self._used = True
        self._primary.check_usable()  # a closing primary admits no reads, not even on replicas
        replicas = self._replicas
        if replicas is not None:
            tried: list[Replica[Any]] = []
            while (replica := replicas.choose(tried)) is not None:
                lease: Lease[AsyncSession] = replica.pool.get_connection()
                try:
                    session = await lease.__aenter__()
                except PoolOverloadedError:
                    raise
                except PoolTimeoutError as exc:
                    if exc.__cause__ is not None:  # the replica itself did not answer
                        replicas.take_out(replica, str(exc))
                    raise
                except Exception as exc:  # already mapped and scrubbed by the replica's pool
                    replicas.take_out(replica, f"{type(exc).__name__}: {exc}")
                    tried.append(replica)
                    continue
                replica.reads += 1
                self._lease = lease
                return session
            replicas.fallbacks += 1
        lease = self._primary.get_connection()
        session = await lease.__aenter__()
        self._lease = lease
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            await lease.__aexit__(exc_type, exc, tb)
