"""The report's prose: causes of missed targets (found by profiling) and method notes.

:func:`explain` writes one paragraph per missed target, naming the cause for
the workloads whose cause is known (``CAUSES``); a miss without a known cause
is called what it is.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CAUSES", "closing_notes", "explain"]

#: (target key, workload) -> the cause, as found with pyinstrument (and time.process_time).
CAUSES: dict[tuple[str, str], str] = {
    ("ratio", "lease: pg"): (
        "see the round trips each side makes in the section counted on the wire below. "
        "Before commit 17394b7 (the alive-bypass window) a resync session or Core lease "
        "sent `BEGIN` at checkout as its liveness check and `ROLLBACK` at release: two "
        "round trips for an empty lease, where SQLAlchemy's empty `Session.begin()` checks "
        "out nothing and `engine.connect()` sends nothing (pyinstrument over 2,000 empty "
        "leases then: `BEGIN` 33% and the release 46% of the wall time). A hot lease now "
        "sends none; a row still under target at one of these commits is CPU per lease "
        "(building the session), not I/O."
    ),
    ("ratio", "http GET"): (
        "no cost in resync beyond the lease. With `httpx.MockTransport` (no network; CPU per "
        "request with `time.process_time` over 20,000 requests, and pyinstrument) the pool's "
        "client costs what a bare `AsyncClient` costs (121-128 us vs 128-143 us, within the "
        "noise) and the lease adds 3 us -- under 1% of a ~900 us request here. The per-round "
        "ratios in `benchmarks.json` spread far wider than that: client, upstream process, "
        "PostgreSQL and other work share two CPUs."
    ),
    ("ratio", "redis GET"): (
        "not resync's cost: its Redis lease is cheaper than the driver pool's own "
        "checkout (the `lease: redis` rows, resync about twice redis-py), so a row under "
        "0.97 is the spread of its rounds (see their per-round ratios)."
    ),
    ("ratio", "pg SELECT 1"): (
        "not a cost found in resync: a lease makes the round trips SQLAlchemy's "
        "`Session.begin()` makes (BEGIN, the statements, COMMIT) and skips its QueuePool "
        "checkout and check-in. Profiled at 1 caller, rounds of each side alone, back to "
        "back, moved its p50 between 0.30 and 0.72 ms for resync and 0.39 and 0.87 ms for "
        "SQLAlchemy: both sides' figures follow what else the two CPUs are running (client, "
        "PostgreSQL and other work), and a row under 0.97 is that spread -- see its "
        "per-round ratios in `benchmarks.json`."
    ),
}
CAUSES[("ratio", "pg read-modify-write")] = CAUSES[("ratio", "pg SELECT 1")]
CAUSES[("ratio", "redis SET")] = CAUSES[("ratio", "redis GET")]
CAUSES[("ratio", "lease: redis")] = CAUSES[("ratio", "redis GET")]

_PROFILED = (
    "Profiled (pyinstrument, `time.process_time`), the gate does no work that grows with "
    "the queue: an in-memory lease costs 4.9 us of CPU at 10 callers and 11.7 us at 1,000 "
    "(the queued path: a future, a timer, a wake-up), against asyncio.Semaphore's 2.2 and "
    "4.4 us."
)


def _tail_cause(workload: str, rows: list[Any]) -> str:
    ours = [
        r
        for r in rows
        if r.workload == workload and r.concurrency == 1000 and r.impl.startswith("resync")
    ]
    stall = max((max(r.extra.get("round_max_stall_ms") or [0.0]) for r in ours), default=0.0)
    collected = max((max(r.extra.get("round_gc_ms") or [0.0]) for r in ours), default=0.0)
    mean = min((r.mean_ms for r in ours), default=0.0)
    if mean and stall >= 0.1 * mean:
        return (
            f"in these rounds the event loop woke up to {stall:.0f} ms late (a 5 ms ticker; "
            f"`round_max_stall_ms` in the JSON) against a mean wait of {mean:.0f} ms: the "
            "process was not running (other work held both CPUs) or was collecting garbage "
            f"(up to {collected:.0f} ms per round, `round_gc_ms`), and one such stall delays "
            "every queued caller at once."
        )
    return "no stall of the loop was recorded in these rounds and no cause was found."


def _tail_common(rows: list[Any]) -> str:
    floor = [
        r.p99_over_mean for r in rows if r.impl == "asyncio.Semaphore" and r.concurrency == 1000
    ]
    text = _PROFILED
    if floor:
        text += (
            " asyncio.Semaphore, with no pool logic at all, measured p99/mean "
            + " and ".join(f"{f:.2f}" for f in floor)
            + " at 1,000 callers in the same runs."
        )
    return text


def explain(verdicts: list[dict[str, Any]], rows: list[Any]) -> list[str]:
    """A paragraph per missed target: the known cause per workload, or none found."""
    lines: list[str] = []
    for verdict in verdicts:
        if verdict["met"] or not verdict["checked"]:
            continue
        lines.append(f"**Missed: {verdict['target']}.**")
        for workload in verdict["workloads"]:
            cause = CAUSES.get((verdict["key"], workload))
            if cause is None and verdict["key"] == "tail":
                cause = _tail_cause(workload, rows)
            if cause is None:
                cause = (
                    "no cause in resync found by profiling; the per-round figures in "
                    "`benchmarks.json` show how far the rounds spread on this machine."
                )
            lines.append(f"- *{workload}*: {cause}")
        if verdict["key"] == "tail":
            lines += ["", _tail_common(rows)]
        lines.append("")
    return lines


def closing_notes() -> list[str]:
    """How each side is used and what that costs in round trips."""
    return [
        "- **Method.** Callers run in a closed loop, all starting at once; measuring starts "
        "once as many operations finished as there are callers (at least 0.15 s, at most "
        "3 s), so the first wave -- whose requests some implementations prepare before "
        "queueing -- is not mistaken for the steady state. ops/s counts operations finished "
        "within the round; latencies are every operation finished from its start on, "
        "including those still in flight at its end, however long ago they started (a "
        "caller an unfair pool starved stays in the tail -- its wait is then bounded by the "
        "length of the round, since it is served once no new operations start), measured "
        "from asking for the "
        "lease to "
        "being done, so queueing counts. `gc.freeze()` after set-up, as a service is after "
        "start-up. PostgreSQL, Redis, the HTTP upstream, the load generator and the client "
        "share the machine's CPUs.",
        "- **PostgreSQL round trips** (counted on the wire by `benchmarks/pg_roundtrips.py`, "
        "see its section and `roundtrips.md`). `asyncpg`: the statement(s) in autocommit "
        "(RMW in `conn.transaction()`), plus the reset query the pool sends on release; "
        "`asyncpg no-reset` the same without it. `psycopg_pool`: BEGIN, the statement(s), "
        "COMMIT on exit. `sqlalchemy`: `Session.begin()`, i.e. BEGIN, statements, COMMIT -- "
        "the unit of work a resync session lease is; `sqlalchemy core`: `engine.connect()` "
        "and `conn.commit()`, the same exchanges. `resync` and `resync core`: the same unit "
        "of work (since 17394b7 a hot connection's BEGIN waits for the first statement, so "
        "an empty hot lease sends nothing); `resync driver`: the statement(s) alone, "
        "autocommit. Every connection "
        "runs with `synchronous_commit = off`, so commits do not wait for a disk shared "
        "with other work.",
        "- **Why resync can be faster than the engine it wraps.** resync keeps its "
        "connections itself over a `NullPool` engine and binds each session to a connection "
        "it already holds, so a lease skips SQLAlchemy's QueuePool checkout and check-in "
        "(the `Connection` object, pool events, the reset on return). With more callers than "
        "connections, resync's gate serves waiters strictly in arrival order with direct "
        "hand-off, while SQLAlchemy's and redis-py's queues let a newcomer take a just-returned "
        "connection ahead of callers already waiting -- the long tail in their p99. Over "
        "HTTP at 1,000 callers the gate matters more: pyinstrument of a bare "
        "`httpx.AsyncClient` in the steady state puts 56% of its CPU in httpcore's "
        "`AsyncConnectionPool._assign_requests_to_connections`, which scans every queued "
        "request on each arrival and release (O(queue) per request); resync lets at most "
        "`max_size` requests into httpx, so its queue stays short.",
        "- **Lease only.** Check out, `await asyncio.sleep(0)` (so callers really overlap), "
        "check in; whatever I/O the pool does by itself on that path is part of it (counted "
        "in the round-trip section): asyncpg sends its reset query on release; SQLAlchemy's "
        "empty `Session.begin()` (`sqlalchemy`) checks out nothing, its `engine.connect()` "
        "(`sqlalchemy core`) and psycopg_pool's `connection()` send nothing. "
        "`asyncio.Semaphore` is the floor of any asyncio admission, shown for reference.",
        "- **p99 ÷ mean at 1,000 callers.** With a FIFO queue every caller waits about "
        "1,000 ÷ throughput, so the tail is set by how steady throughput is over one pass "
        "through the queue: a stall of the process (another process taking the CPU, a "
        "collection) adds to every queued caller at once.",
        "- **RSS.** Read from `/proc/self/statm` after a warm-up of 20,000 leases and at the "
        "end, after a collection both times; the SQLite figure is the database pool's lease "
        "path on embedded SQLite (session binding, commit, check-in; no network); the "
        "PostgreSQL rows are each lease kind's empty lease on one pool, 10 concurrent "
        "callers, read every 100,000 leases, with a yield inside each lease and without "
        "(`benchmarks/rss_leases.py`, `rss_leases.md`).",
        "- **Service.** `resync serve --loop <loop>` with PostgreSQL and Redis pools of 10, "
        "driven by wrk (one thread, 30 s timeout) or, without wrk, by the httpx load "
        "generator in `benchmarks/loadgen.py`; GETs are mostly served from the Redis cache "
        "(each request still leases a database session, as the route's dependency does). "
        "wrk's figures include its connecting and the first wave of requests (rounds at "
        "1,000 connections last three times longer for that); no ratio: there is no "
        "bare-driver version of the service.",
    ]
